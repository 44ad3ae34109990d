// Before anything else of loom runs (the earliest constructor priority), stop with a message when
// this CPU lacks an extension the build's -march lets the compiler use (launcher/cpu_features.h).
#include <cstdio>
#include <cstdlib>

#include "launcher/cpu_features.h"

namespace {

__attribute__((constructor(101))) void check_cpu() {
  const std::string missing = loom::cpu_features_missing(LOOM_CPU_FEATURES, loom::cpu_supports);
  if (missing.empty()) return;
  std::fprintf(stderr,
               "loom: this binary was built with LOOM_MARCH=%s, for CPUs with %s; this CPU lacks "
               "%s. Build it for this machine (LOOM_MARCH=native ./run.sh --setup-only) or for a "
               "level every machine has (LOOM_MARCH=x86-64-v3, the default, or x86-64-v2).\n",
               LOOM_MARCH_NAME, LOOM_CPU_FEATURES, missing.c_str());
  std::_Exit(1);
}

}  // namespace
