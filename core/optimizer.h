// AdamW over the model's flat buffers, the learning-rate schedule, and gradient clipping.
//
//   loom::Optimizer opt = loom::optimizer_create(model);
//   float lr = loom::learning_rate(cfg.optim(), cfg.train().steps(), step);
//   double norm = loom::grad_norm(model);
//   loom::optimizer_step(opt, model, cfg.optim(), lr, loom::clip_scale(norm, max_norm));
#pragma once
#include <vector>

#include "core/model.h"
#include "loom.pb.h"

namespace loom {

struct Optimizer {
  std::vector<float> m, v;  // first and second moments, laid out as Model::params
  long step = 0;            // updates applied so far
};

Optimizer optimizer_create(const Model& model);

// Learning rate for the update that follows `step` completed steps: linear warm-up to optim.lr
// over warmup_steps, then cosine decay to lr · lr_min_ratio at total_steps.
float learning_rate(const config::OptimConfig& optim, int total_steps, long step);

// Global L2 norm of all gradients.
double grad_norm(const Model& model);

// Factor that brings the gradient norm down to max_norm (torch's clip_grad_norm_); 1 when
// clipping is off (max_norm = 0) or not needed.
float clip_scale(double norm, float max_norm);

// One AdamW update of every tensor, with weight decay on matrices and embeddings only.
void optimizer_step(Optimizer& opt, Model& model, const config::OptimConfig& optim, float lr,
                    float grad_scale);

}  // namespace loom
