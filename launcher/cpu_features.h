// What the CPU must have for this binary: the instruction-set extensions LOOM_MARCH (CMake)
// lets the compiler use, checked when `loom` starts (launcher/cpu_check.cpp), so a binary built
// for another machine stops with a message naming what is missing instead of dying of SIGILL
// mid-run. This file and cpu_check.cpp are compiled for plain x86-64, so the check itself runs
// on any x86-64 CPU.
//
//   std::string missing = loom::cpu_features_missing("avx2,fma", loom::cpu_supports);  // "" if none
#pragma once
#include <functional>
#include <string>

namespace loom {

// The names of `required` (comma-separated, GCC's names: "avx2", "fma", "avx512f", ...) for
// which `supported` is false, comma-separated; "" when none is missing.
std::string cpu_features_missing(const std::string& required,
                                 const std::function<bool(const std::string&)>& supported);

// Whether this CPU has the extension `name` (one of the names LOOM_CPU_FEATURES can hold);
// false for a name it does not know.
bool cpu_supports(const std::string& name);

}  // namespace loom
