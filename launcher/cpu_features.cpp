#include "launcher/cpu_features.h"

#include <sstream>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace loom {

std::string cpu_features_missing(const std::string& required,
                                 const std::function<bool(const std::string&)>& supported) {
  std::string missing, name;
  std::istringstream names(required);
  while (std::getline(names, name, ','))
    if (!name.empty() && !supported(name)) missing += (missing.empty() ? "" : ",") + name;
  return missing;
}

bool cpu_supports(const std::string& name) {
#if !defined(__x86_64__)
  return !name.empty();  // LOOM_CPU_FEATURES lists x86 extensions only
#else
  __builtin_cpu_init();
  // __builtin_cpu_supports takes a literal: one line per name CMakeLists.txt may list.
#define LOOM_FEATURE(literal) \
  if (name == literal) return __builtin_cpu_supports(literal);
  LOOM_FEATURE("sse4.2")
  LOOM_FEATURE("popcnt")
  LOOM_FEATURE("avx")
  LOOM_FEATURE("avx2")
  LOOM_FEATURE("fma")
  LOOM_FEATURE("bmi2")
  if (name == "f16c") {  // not a name clang's __builtin_cpu_supports knows: CPUID leaf 1, ECX bit 29
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  }
  LOOM_FEATURE("avx512f")
  LOOM_FEATURE("avx512bw")
  LOOM_FEATURE("avx512vl")
  LOOM_FEATURE("avx512dq")
#undef LOOM_FEATURE
  return false;
#endif
}

}  // namespace loom
