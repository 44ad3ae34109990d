// Converting an unshared model into a looped one (Relaxed Recursive Transformers, Bae et al.
// 2024): its N = P + K·R + C layers become a prelude of its first P, a coda of its last C, and a
// shared block of K layers run R times in place of the middle K·R, iteration ℓ's layer j taking
// the place of middle layer ℓ·K + j (its "tied" layer). The shared layer j starts as
//   kStepwise: middle layer round(j · (K·R − 1) / (K − 1)) (layers spread evenly; 0 for K = 1),
//   kAverage:  the mean of its R tied layers,
//   kLower:    middle layer j (the first K);
// and with LoRA rank r each iteration's delta of each linear layer is the rank-r truncated SVD of
// W_ℓ − W′ (B = U_r Σ_r, A = V_rᵀ), so at full rank the looped model computes what the unshared
// one did (the norms and biases are shared: the chosen init's).
//
//   const config::ModelConfig looped = loom::looped_config(source.spec.config, options);
//   Model target = loom::model_create(looped);
//   target.buf.params.upload(loom::convert_params(source, source_params, target, options));
#pragma once
#include <string>
#include <vector>

#include "core/model.h"
#include "loom.pb.h"

namespace loom {

struct ConvertOptions {
  enum class Init { kStepwise, kAverage, kLower };
  int prelude = 0, block_layers = 1, loops = 1, coda = 0;
  Init init = Init::kStepwise;
  int lora_rank = 0;
};

// "stepwise", "average" or "lower"; throws loom::Error naming the choices otherwise.
ConvertOptions::Init convert_init(const std::string& name);

// The looped model's config: the source's with the new layer counts and loop_lora_rank. Throws
// loom::Error when the source is looped already, or when P + K·R + C is not its layer count.
config::ModelConfig looped_config(const config::ModelConfig& source, const ConvertOptions& options);

// The looped model's flat parameters (whole models, host memory: source_params is source's
// buffer), as the header says.
std::vector<float> convert_params(const Model& source, const float* source_params,
                                  const Model& target, const ConvertOptions& options);

}  // namespace loom
