// AdamW over the model's flat buffers, the learning-rate schedule, and gradient clipping.
//
// The optimizer owns a list of ranges of the flat parameter buffer: the whole buffer, or with
// ZeRO-1 this rank's shards. Its moments and the gradients it is given are laid out compactly in
// the order of those ranges.
//
//   loom::Optimizer opt = loom::optimizer_create(model);
//   float lr = loom::learning_rate(cfg.optim(), cfg.train().steps(), step);
//   double norm = loom::grad_norm(model);
//   loom::optimizer_step(opt, model, cfg.optim(), lr, loom::clip_scale(norm, max_norm));
#pragma once
#include <vector>

#include "core/model.h"
#include "loom.pb.h"
#include "parallel/communicator.h"

namespace loom {

struct Optimizer {
  std::vector<ShardRange> owned;  // ranges of the flat buffer this optimizer updates
  // First and second moments of the owned ranges, compact, in the model's backend's memory.
  kernels::DeviceArray<float> m, v;
  long step = 0;                  // updates applied so far
};

// Owns every parameter.
Optimizer optimizer_create(const Model& model);
// Owns `owned` (disjoint ranges of the flat buffer), e.g. this rank's ZeRO-1 shards.
Optimizer optimizer_create(const Model& model, std::vector<ShardRange> owned);

// Learning rate for the update that follows `step` completed steps: linear warm-up to optim.lr
// over warmup_steps, then cosine decay to lr · lr_min_ratio at total_steps.
float learning_rate(const config::OptimConfig& optim, int total_steps, long step);

// Global L2 norm of all gradients.
double grad_norm(const Model& model);

// Factor that brings the gradient norm down to max_norm (torch's clip_grad_norm_); 1 when
// clipping is off (max_norm = 0) or not needed.
float clip_scale(double norm, float max_norm);

// One AdamW update of the owned parameters, with weight decay on matrices and embeddings only.
// `grads` holds the owned ranges' gradients compactly; null means model.grads (only when the
// optimizer owns the whole buffer). Runs on the model's backend (kernels/backend.h).
void optimizer_step(Optimizer& opt, Model& model, const config::OptimConfig& optim, float lr,
                    float grad_scale, const float* grads = nullptr);

}  // namespace loom
