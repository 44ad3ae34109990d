// Pre-norms: LayerNorm and RMSNorm over the last dimension C of N rows.
// Forward saves per-row statistics for backward. Input gradients are accumulated (+=) because
// they flow into the residual stream's gradient; parameter gradients are accumulated too.
#pragma once

namespace loom::kernels::cpu {

// out (N, C) = (inp − mean) · rstd · weight + bias; mean, rstd (N) saved.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C, float eps);
// dinp (N, C) +=; dweight (C) +=; dbias (C) +=.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);

// out (N, C) = inp · rstd · weight with rstd = 1/sqrt(mean(inp²) + eps); rstd (N) saved.
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps);
// dinp (N, C) +=; dweight (C) +=.
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C);

}  // namespace loom::kernels::cpu
