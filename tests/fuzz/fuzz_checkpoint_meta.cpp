// The checkpoint metadata reader (checkpoint.textproto) and the piece reader behind it: any text
// ends in a checkpoint state (and a loaded model, when its pieces fit one) or a loom::Error, never
// a crash. The folder holds a data file, rank_00000.bin, for the pieces to point into.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/checkpoint.h"
#include "base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char pattern[] = "/tmp/loom-fuzz-meta-XXXXXX";
    const std::string root(mkdtemp(pattern));
    std::filesystem::create_directories(root + "/step_0000001");
    if (FILE* f = std::fopen((root + "/step_0000001/rank_00000.bin").c_str(), "wb")) {
      for (int i = 0; i < 1 << 16; ++i) std::fputc(i * 7 & 0xff, f);
      std::fclose(f);
    }
    return root + "/step_0000001";
  }();
  // The model of the seed corpus's sharded-* checkpoint (257 tokens, width 8, one layer), cut in
  // two over tp (rank 1), whose optimizer holds a ZeRO slice of the moments.
  static loom::Model model = [] {
    loom::config::ModelConfig m;
    m.set_vocab_size(257);
    m.set_d_model(8);
    m.set_n_heads(2);
    m.set_d_mlp(16);
    m.set_max_seq_len(4);
    m.set_prelude_layers(0);
    m.set_block_layers(1);
    m.set_loops(1);
    m.set_coda_layers(0);
    loom::Model out = loom::model_layout(m, nullptr, {2, 1, nullptr});
    out.buf.params = loom::kernels::DeviceArray<float>(out.buf.backend, out.layout.num_params);
    return out;
  }();
  static loom::Optimizer optimizer =
      loom::optimizer_create(model, {loom::shard_range(model.layout.num_params, 3, 1)});
  if (FILE* f = std::fopen((dir + "/checkpoint.textproto").c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    (void)loom::checkpoint_read_state(dir);
    (void)loom::checkpoint_load(dir, model, &optimizer);
  } catch (const loom::Error&) {
  }
  return 0;
}
