// Tensor-parallel shards of the parameter layout: which global elements each rank holds (QKV by
// heads in each of q, k, v; row-parallel by input columns; the vocabulary padded), that the
// shards of all ranks rebuild the global tensors, and that init draws the same global weights
// at any tp.
#include <gtest/gtest.h>

#include "core/config.h"
#include "core/model.h"
#include "core/param_shards.h"

namespace loom {
namespace {

config::ModelConfig small_model() {
  config::RunConfig cfg;
  for (const char* o : {"model.vocab_size=13", "model.d_model=8", "model.n_heads=4",
                        "model.d_mlp=12", "model.max_seq_len=4", "model.block_layers=1",
                        "model.loops=2", "model.tie_embeddings=false"})
    apply_override(cfg, o);
  return cfg.model();
}

// local (m.num_params) ← this rank's shards of the global buffer (tensors in order).
void scatter_global(const Model& m, const float* global, float* local) {
  for (const ParamTensor& t : m.layout.tensors) {
    tensor_shard_extract(t, m.par.tp.rank, global, local + t.offset);
    global += tensor_global_size(t);
  }
}

const ParamTensor& tensor(const Model& m, const std::string& name) {
  for (const ParamTensor& t : m.layout.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

// The global buffer with element i = i, so a shard's values name the global elements it holds.
std::vector<float> iota_global(const Model& m) {
  std::vector<float> global(model_global_floats(m));
  for (size_t i = 0; i < global.size(); ++i) global[i] = static_cast<float>(i);
  return global;
}

size_t global_offset(const Model& m, const std::string& name) {
  size_t at = 0;
  for (const ParamTensor& t : m.layout.tensors) {
    if (t.name == name) return at;
    at += tensor_global_size(t);
  }
  throw std::runtime_error("no tensor " + name);
}

TEST(TensorParallel, ShardShapes) {
  const Model m = model_layout(small_model(), nullptr, TensorParallel{4, 1, nullptr});
  EXPECT_EQ(m.par.Cl, 2);
  EXPECT_EQ(m.par.Hl, 1);
  EXPECT_EQ(m.par.Fl, 3);
  EXPECT_EQ(m.par.vocab.rows, 4);  // 13 padded to 16
  EXPECT_EQ(m.par.vocab.vocab_begin, 4);
  EXPECT_EQ(tensor(m, "wte").shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(tensor(m, "wte").global_shape, (std::vector<int64_t>{13, 8}));
  EXPECT_EQ(tensor(m, "block.0.attn.qkv.weight").shape, (std::vector<int64_t>{6, 8}));
  EXPECT_EQ(tensor(m, "block.0.attn.proj.weight").shape, (std::vector<int64_t>{8, 2}));
  EXPECT_EQ(tensor(m, "block.0.mlp.fc.bias").shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(tensor(m, "block.0.mlp.proj.weight").shape, (std::vector<int64_t>{8, 3}));
  EXPECT_EQ(tensor(m, "block.0.attn.proj.bias").shard_dim, -1);
  EXPECT_EQ(tensor(m, "block.0.norm1.weight").shard_dim, -1);
}

TEST(TensorParallel, ShardsHoldTheRightGlobalElements) {
  const Model m = model_layout(small_model(), nullptr, TensorParallel{4, 1, nullptr});
  const std::vector<float> global = iota_global(m);
  std::vector<float> local(m.layout.num_params, -1.0f);
  scatter_global(m, global.data(), local.data());
  const int C = 8;
  // QKV rows of head 1 (rows 2, 3) in each of q, k and v.
  const ParamTensor& qkv = tensor(m, "block.0.attn.qkv.weight");
  const size_t g_qkv = global_offset(m, qkv.name);
  for (int part = 0; part < 3; ++part)
    for (int row = 0; row < 2; ++row)
      for (int col = 0; col < C; ++col)
        EXPECT_EQ(local[qkv.offset + (part * 2 + row) * C + col],
                  g_qkv + (part * C + 2 + row) * C + col);
  // Row-parallel projection: input columns 2, 3 of every output row.
  const ParamTensor& proj = tensor(m, "block.0.attn.proj.weight");
  const size_t g_proj = global_offset(m, proj.name);
  for (int row = 0; row < C; ++row)
    for (int col = 0; col < 2; ++col)
      EXPECT_EQ(local[proj.offset + row * 2 + col], g_proj + row * C + 2 + col);
  // Vocabulary rows 4..7.
  const ParamTensor& wte = tensor(m, "wte");
  for (int i = 0; i < 4 * C; ++i) EXPECT_EQ(local[wte.offset + i], global_offset(m, "wte") + 4 * C + i);
}

TEST(TensorParallel, AllShardsRebuildTheGlobalBuffer) {
  for (int tp : {1, 2, 4}) {
    const Model m0 = model_layout(small_model(), nullptr, TensorParallel{tp, 0, nullptr});
    const std::vector<float> global = iota_global(m0);
    std::vector<float> rebuilt(global.size(), -1.0f);
    for (int r = 0; r < tp; ++r) {
      const Model m = model_layout(small_model(), nullptr, TensorParallel{tp, r, nullptr});
      std::vector<float> local(m.layout.num_params, -1.0f);
      scatter_global(m, global.data(), local.data());
      size_t at = 0;
      for (const ParamTensor& t : m.layout.tensors) {
        tensor_shard_insert(t, r, local.data() + t.offset, rebuilt.data() + at);
        at += tensor_global_size(t);
      }
      // The last rank's padding rows (vocabulary 13 over 4 ranks: rows 13..15) are zero.
      if (tp == 4 && r == 3) {
        const ParamTensor& wte = tensor(m, "wte");
        for (int i = 1 * 8; i < 4 * 8; ++i) EXPECT_EQ(local[wte.offset + i], 0.0f) << i;
      }
    }
    EXPECT_EQ(rebuilt, global) << "tp " << tp;
  }
}

TEST(TensorParallel, InitDrawsTheSameGlobalWeightsAtAnyTp) {
  Model whole = model_create(small_model());
  model_init(whole, 7);
  for (int tp : {2, 4})
    for (int r = 0; r < tp; ++r) {
      Model m = model_create(small_model(), nullptr, TensorParallel{tp, r, nullptr});
      model_init(m, 7);
      std::vector<float> expected(m.layout.num_params);
      scatter_global(m, whole.buf.params.data(), expected.data());
      EXPECT_EQ(m.buf.params.download(), expected) << "tp " << tp << " rank " << r;
    }
}

}  // namespace
}  // namespace loom
