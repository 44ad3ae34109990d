#include "core/optimizer.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace loom {

Optimizer optimizer_create(const Model& model) {
  return optimizer_create(model, {ShardRange{0, model.layout.num_params}});
}

Optimizer optimizer_create(const Model& model, std::vector<ShardRange> owned) {
  Optimizer opt;
  size_t total = 0;
  for (const ShardRange& r : owned) {
    LOOM_CHECK(r.begin <= r.end && r.end <= model.layout.num_params);
    total += r.size();
  }
  opt.owned = std::move(owned);
  opt.m = kernels::DeviceArray<float>(model.buf.backend, total);
  opt.v = kernels::DeviceArray<float>(model.buf.backend, total);
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
  return std::sqrt(model.buf.backend->sum_squares(model.buf.grads.data(), model.layout.num_params));
}

float clip_scale(double norm, float max_norm) {
  if (max_norm <= 0.0f) return 1.0f;
  // As torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? static_cast<float>(coef) : 1.0f;
}

void optimizer_step(Optimizer& opt, Model& model, const config::OptimConfig& optim, float lr,
                    float grad_scale, const float* grads) {
  if (!grads) {
    LOOM_CHECK(opt.owned.size() == 1 && opt.owned[0].size() == model.layout.num_params);
    grads = model.buf.grads.data();
  }
  ++opt.step;
  size_t compact = 0;
  for (const ShardRange& r : opt.owned) {
    // The pieces of each tensor inside this range, each with that tensor's weight decay.
    for (const ParamTensor& t : model.layout.tensors) {
      const size_t lo = std::max(r.begin, t.offset), hi = std::min(r.end, t.offset + t.size);
      if (lo >= hi) continue;
      const size_t c = compact + (lo - r.begin);
      model.buf.backend->adamw_update(model.buf.params.data() + lo, grads + c, opt.m.data() + c,
                                      opt.v.data() + c, hi - lo, lr, optim.beta1(), optim.beta2(),
                                      optim.eps(), t.decay ? optim.weight_decay() : 0.0f, opt.step,
                                      grad_scale);
    }
    compact += r.size();
  }
}

}  // namespace loom
