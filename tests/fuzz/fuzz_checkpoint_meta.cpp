// The checkpoint metadata reader (checkpoint.textproto): any text ends in a checkpoint state or
// a loom::Error, never a crash.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/checkpoint.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char pattern[] = "/tmp/loom-fuzz-meta-XXXXXX";
    const std::string root(mkdtemp(pattern));
    std::filesystem::create_directories(root + "/step_0000001");
    return root + "/step_0000001";
  }();
  if (FILE* f = std::fopen((dir + "/checkpoint.textproto").c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    (void)loom::checkpoint_read_state(dir);
  } catch (const loom::Error&) {
  }
  return 0;
}
