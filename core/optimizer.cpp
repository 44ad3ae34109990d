#include "core/optimizer.h"

#include <cmath>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/vector.h"

namespace loom {

Optimizer optimizer_create(const Model& model) {
  Optimizer opt;
  opt.m.assign(model.num_params, 0.0f);
  opt.v.assign(model.num_params, 0.0f);
  return opt;
}

float learning_rate(const config::OptimConfig& optim, int total_steps, long step) {
  const double peak = optim.lr(), floor = optim.lr() * optim.lr_min_ratio();
  const long warmup = optim.warmup_steps();
  if (step < warmup) return static_cast<float>(peak * (step + 1) / warmup);
  if (total_steps <= warmup) return static_cast<float>(peak);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / (total_steps - warmup));
  return static_cast<float>(floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * progress)));
}

double grad_norm(const Model& model) {
  return std::sqrt(kernels::cpu::vector_sum_squares(model.grads.data(), model.num_params));
}

float clip_scale(double norm, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  // As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? static_cast<float>(coef) : 1.0f;
}

void optimizer_step(Optimizer& opt, Model& model, const config::OptimConfig& optim, float lr,
                    float grad_scale) {
  ++opt.step;
  for (const ParamTensor& t : model.tensors) {
    kernels::cpu::adamw_update(model.params.data() + t.offset, model.grads.data() + t.offset,
                               opt.m.data() + t.offset, opt.v.data() + t.offset, t.size, lr,
                               optim.beta1(), optim.beta2(), optim.eps(),
                               t.decay ? optim.weight_decay() : 0.0f, opt.step, grad_scale);
  }
}

}  // namespace loom
