#include "core/convert.h"

#include <cmath>

#include "base/error.h"
#include "kernels/cpu/svd.h"

namespace loom {
namespace {

std::string num(long v) { return std::to_string(v); }

// A linear layer's weight and its LoRA factors in a layer's offsets: rows (out) × columns (in).
struct LinearPlace {
  size_t weight;
  LoraFactors lora;
  int64_t out, in;
};

std::vector<LinearPlace> linears(const Model& m, const LayerOffsets& o) {
  const int64_t C = m.spec.C, F = m.spec.F;
  const int64_t Ckv = static_cast<int64_t>(m.spec.Hkv) * (C / m.spec.H);
  const int64_t fc = m.spec.config.mlp() == config::ModelConfig::SWIGLU ? 2 * F : F;
  return {{o.qkv_w, o.qkv_lora, C + 2 * Ckv, C},
          {o.attn_proj_w, o.attn_proj_lora, C, C},
          {o.fc_w, o.fc_lora, fc, C},
          {o.mlp_proj_w, o.mlp_proj_lora, C, F}};
}

// The source's middle layer (0-based within the K·R middle ones) the shared layer j starts as.
int initial_layer(const ConvertOptions& o, int j) {
  const int middle = o.block_layers * o.loops;
  if (o.init == ConvertOptions::Init::kLower) return j;
  if (o.block_layers == 1) return 0;
  return static_cast<int>(
      std::lround(static_cast<double>(j) * (middle - 1) / (o.block_layers - 1)));
}

// Iteration ℓ's factors of each linear layer of shared layer j: the truncated SVD of the tied
// layer's weight less the shared one.
void fill_lora(const Model& source, const float* from, const Model& target, std::vector<float>& to,
               const ConvertOptions& o, int j, int loop) {
  const int r = o.lora_rank;
  const int tied = o.prelude + loop * o.block_layers + j;
  const std::vector<LinearPlace> mine = linears(source, source.layout.layers[tied]);
  LayerOffsets shared = target.layout.layers[o.prelude + j];
  const LayerOffsets& lora = target.layout.lora[loop][j];
  shared.qkv_lora = lora.qkv_lora, shared.attn_proj_lora = lora.attn_proj_lora;
  shared.fc_lora = lora.fc_lora, shared.mlp_proj_lora = lora.mlp_proj_lora;
  const std::vector<LinearPlace> theirs = linears(target, shared);
  for (size_t k = 0; k < mine.size(); ++k) {
    const LinearPlace& t = theirs[k];
    std::vector<double> delta(static_cast<size_t>(t.out) * t.in);
    for (size_t i = 0; i < delta.size(); ++i)
      delta[i] = static_cast<double>(from[mine[k].weight + i]) - to[t.weight + i];
    std::vector<double> B(static_cast<size_t>(t.out) * r), A(static_cast<size_t>(r) * t.in);
    kernels::cpu::truncated_svd(delta.data(), static_cast<int>(t.out), static_cast<int>(t.in), r,
                                B.data(), A.data());
    for (size_t i = 0; i < B.size(); ++i) to[t.lora.b + i] = static_cast<float>(B[i]);
    for (size_t i = 0; i < A.size(); ++i) to[t.lora.a + i] = static_cast<float>(A[i]);
  }
}

}  // namespace

ConvertOptions::Init convert_init(const std::string& name) {
  if (name == "stepwise") return ConvertOptions::Init::kStepwise;
  if (name == "average") return ConvertOptions::Init::kAverage;
  if (name == "lower") return ConvertOptions::Init::kLower;
  throw Error("--init " + name + ": expected stepwise, average or lower");
}

config::ModelConfig looped_config(const config::ModelConfig& source, const ConvertOptions& o) {
  if (source.loops() != 1)
    throw Error("the checkpoint's model is looped already (model.loops " + num(source.loops()) +
                "); convert an unshared one (loops 1)");
  const int layers = source.prelude_layers() + source.block_layers() + source.coda_layers();
  if (o.prelude < 0 || o.coda < 0 || o.block_layers < 1 || o.loops < 1)
    throw Error("--prelude and --coda must be at least 0, --block-layers and --loops at least 1");
  const long converted = o.prelude + static_cast<long>(o.block_layers) * o.loops + o.coda;
  if (converted != layers)
    throw Error("--prelude " + num(o.prelude) + " + --block-layers " + num(o.block_layers) +
                " × --loops " + num(o.loops) + " + --coda " + num(o.coda) + " = " + num(converted) +
                " layers, but the checkpoint's model has " + num(layers));
  config::ModelConfig m = source;
  m.set_prelude_layers(o.prelude);
  m.set_block_layers(o.block_layers);
  m.set_loops(o.loops);
  m.set_coda_layers(o.coda);
  m.set_loop_lora_rank(o.lora_rank);
  return m;
}

std::vector<float> convert_params(const Model& source, const float* from, const Model& target,
                                  const ConvertOptions& o) {
  std::vector<float> to(target.layout.num_params, 0.0f);
  auto copy = [&](const ShardRange& a, const ShardRange& b) {  // a's floats to b's start
    std::copy(from + a.begin, from + a.end, to.begin() + b.begin);
  };
  copy(source.layout.embedding_range, target.layout.embedding_range);
  copy(source.layout.head_range, target.layout.head_range);
  const int N = source.spec.unique_layers;
  for (int i = 0; i < o.prelude; ++i)
    copy(source.layout.layer_ranges[i], target.layout.layer_ranges[i]);
  for (int i = 0; i < o.coda; ++i)
    copy(source.layout.layer_ranges[N - o.coda + i],
         target.layout.layer_ranges[o.prelude + o.block_layers + i]);
  // A layer's own tensors come first in its range, in the same order in both models (the LoRA
  // factors follow them in the target's).
  for (int j = 0; j < o.block_layers; ++j) {
    const ShardRange& shared = target.layout.layer_ranges[o.prelude + j];
    const size_t size = source.layout.layer_ranges[o.prelude].size();
    if (o.init != ConvertOptions::Init::kAverage) {
      const ShardRange& chosen = source.layout.layer_ranges[o.prelude + initial_layer(o, j)];
      copy({chosen.begin, chosen.begin + size}, shared);
      continue;
    }
    for (size_t i = 0; i < size; ++i) {
      double sum = 0;
      for (int loop = 0; loop < o.loops; ++loop)
        sum += from[source.layout.layer_ranges[o.prelude + loop * o.block_layers + j].begin + i];
      to[shared.begin + i] = static_cast<float>(sum / o.loops);
    }
  }
  if (o.lora_rank > 0)
    for (int loop = 0; loop < o.loops; ++loop)
      for (int j = 0; j < o.block_layers; ++j) fill_lora(source, from, target, to, o, j, loop);
  return to;
}

}  // namespace loom
