// The token shard reader: any file ends in a dataset whose every sequence reads back, or a
// loom::Error naming the shard, never a crash or a read out of bounds.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/data.h"
#include "base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char pattern[] = "/tmp/loom-fuzz-shard-XXXXXX";
    return std::string(mkdtemp(pattern));
  }();
  const std::string path = dir + "/train_000000.bin";
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    const loom::Shard shard = loom::shard_open(path);
    const loom::TokenDataset set = loom::dataset_open(dir + "/train_*.bin", 4, 257);
    std::vector<int> inputs(4), targets(4);
    for (int64_t i = 0; i < set.num_sequences() && i < 64; ++i)
      loom::dataset_read_sequence(set, i, inputs.data(), targets.data());
  } catch (const loom::Error&) {
  }
  return 0;
}
