#include "base/error.h"

#include <cstdio>
#include <cstdlib>

namespace loom {

void check_failed(const char* expression, const char* file, int line) {
  std::fprintf(stderr, "loom: internal check failed: %s at %s:%d\n", expression, file, line);
  std::fflush(stderr);
  std::abort();
}

}  // namespace loom
