// Pre-norms on the GPU: LayerNorm and RMSNorm over the last dimension C of N rows; the API of
// kernels/cpu/norm.h plus a Context (and scratch for the deterministic parameter gradients).
// All pointers are device pointers; every call is queued on ctx.stream (no allocation, no
// synchronisation).
//
//   DeviceMemory scratch = device_alloc(layernorm_backward_scratch_bytes(N, C));
//   layernorm_forward<__nv_bfloat16>(ctx, out, mean, rstd, inp, weight, bias, N, C, 1e-5f);
//   layernorm_backward<__nv_bfloat16>(ctx, dinp, dweight, dbias, dout, inp, weight, mean, rstd,
//                                     N, C, scratch.get());
//
// Types: activations (inp, out, dout, dinp) and the weights the forward reads (weight, bias: the
// working copy) are T, float or __nv_bfloat16. Row statistics (mean, rstd) and parameter
// gradients (dweight, dbias) are float. All arithmetic is fp32.
// Contracts as the CPU kernels: forward overwrites out, mean and rstd; backward ACCUMULATES into
// dinp (it is the residual stream's gradient), dweight and dbias.
// Determinism: the row statistics are one warp's fixed reduction tree; the parameter gradients
// are summed per tile of 128 rows into scratch, then each column adds its tiles in tile order —
// bitwise reproducible, no atomics.
#pragma once
#include <cuda_bf16.h>

#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// out (N, C) = (inp − mean) · rstd · weight + bias; mean, rstd (N) saved. Two passes over the
// row (mean, then centred squares), as the CPU kernel.
template <typename T>
void layernorm_forward(const Context& ctx, T* out, float* mean, float* rstd, const T* inp,
                       const T* weight, const T* bias, int N, int C, float eps);

// Bytes of device scratch layernorm_backward needs.
size_t layernorm_backward_scratch_bytes(int N, int C);

// dinp (N, C) +=; dweight (C) float +=; dbias (C) float +=. dout, inp (N, C); weight (C);
// mean, rstd (N) from the forward. scratch: layernorm_backward_scratch_bytes(N, C) bytes,
// 16-byte aligned, contents on entry irrelevant. dinp may alias dout.
template <typename T>
void layernorm_backward(const Context& ctx, T* dinp, float* dweight, float* dbias, const T* dout,
                        const T* inp, const T* weight, const float* mean, const float* rstd, int N,
                        int C, void* scratch);

// out (N, C) = inp · rstd · weight with rstd = 1/sqrt(mean(inp²) + eps); rstd (N) saved.
template <typename T>
void rmsnorm_forward(const Context& ctx, T* out, float* rstd, const T* inp, const T* weight, int N,
                     int C, float eps);

// Bytes of device scratch rmsnorm_backward needs.
size_t rmsnorm_backward_scratch_bytes(int N, int C);

// dinp (N, C) +=; dweight (C) float +=. dout, inp (N, C); weight (C); rstd (N) from the forward.
// scratch: rmsnorm_backward_scratch_bytes(N, C) bytes, 16-byte aligned. dinp may alias dout.
template <typename T>
void rmsnorm_backward(const Context& ctx, T* dinp, float* dweight, const T* dout, const T* inp,
                      const T* weight, const float* rstd, int N, int C, void* scratch);

}  // namespace loom::kernels::cuda
