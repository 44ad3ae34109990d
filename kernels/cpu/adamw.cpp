#include "kernels/cpu/adamw.h"

#include <cmath>

namespace loom::kernels::cpu {

// Follows torch.optim.AdamW's single-tensor path operation by operation (torch ≥ 2.0):
//   p.mul_(1 − lr·wd); m.lerp_(g, 1 − β1); v.mul_(β2).addcmul_(g, g, 1 − β2)
//   denom = sqrt(v) / sqrt(1 − β2ᵗ) + eps;  p.addcdiv_(m, denom, −lr / (1 − β1ᵗ))
// The scalar coefficients are Python floats there: computed in double, rounded to float when
// applied to a float tensor. They are formed the same way here, so the remaining differences
// from torch are its vectorised lerp's fused multiply-add and the float inputs below.
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, long step,
                  float grad_scale) {
  const double lr_d = lr;
  const float decay = static_cast<float>(1.0 - lr_d * weight_decay);
  const float lerp_weight = static_cast<float>(1.0 - static_cast<double>(beta1));
  const float b2 = beta2;
  const float one_minus_b2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(beta2), step);
  const float neg_step_size = static_cast<float>(-(lr_d / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  // torch's lerp switches form at weight 0.5 to stay exact near both ends.
  const bool small_weight = std::abs(lerp_weight) < 0.5f;
  const float lerp_complement = 1.0f - lerp_weight;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) {
    const float g = grads[i] * grad_scale;
    const float p = params[i] * decay;
    const float m_new =
        small_weight ? m[i] + lerp_weight * (g - m[i]) : g - (g - m[i]) * lerp_complement;
    const float v_new = v[i] * b2 + one_minus_b2 * g * g;
    const float denom = std::sqrt(v_new) / bias_correction2_sqrt + eps;
    params[i] = p + neg_step_size * m_new / denom;
    m[i] = m_new;
    v[i] = v_new;
  }
}

}  // namespace loom::kernels::cpu
