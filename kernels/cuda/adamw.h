// AdamW on the GPU over a contiguous range of the flat fp32 parameter buffer; the API of
// kernels/cpu/adamw.h plus a Context, and an optional bf16 working copy written in the same pass.
// Same arithmetic as the CPU kernel, operation by operation (torch.optim.AdamW's single-tensor
// path, scalar coefficients formed in double on the host):
//   p ← p − lr·wd·p;  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
//   p ← p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + eps)
// with g = grad · grad_scale (the clipping coefficient, 1 when not clipping).
//
//   adamw_update(ctx, params, grads, m, v, n, lr, 0.9f, 0.95f, 1e-8f, 0.1f, step, clip_scale,
//                params_bf16);   // params_bf16 = round(params) after the step; may be null
#pragma once
#include <cuda_bf16.h>

#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// params, grads, m, v (n): fp32 device buffers; params, m and v are updated in place.
// params_bf16 (n): when not null, overwritten with the updated params rounded to nearest bf16.
// step is 1-based. Queued on ctx.stream; the scalars are passed by value (no synchronisation).
void adamw_update(const Context& ctx, float* params, const float* grads, float* m, float* v,
                  size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  long step, float grad_scale, __nv_bfloat16* params_bf16 = nullptr);

}  // namespace loom::kernels::cuda
