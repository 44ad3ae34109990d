// AdamW over a contiguous range of the flat parameter buffer, as torch.optim.AdamW computes it:
//   p ← p − lr·wd·p;  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
//   p ← p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)
// with g = grad · grad_scale (the clipping coefficient, 1 when not clipping).
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// step is 1-based.
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, long step,
                  float grad_scale);

}  // namespace loom::kernels::cpu
