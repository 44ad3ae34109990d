// GELU on the GPU, tanh approximation (torch.nn.GELU(approximate="tanh")), elementwise; the API
// of kernels/cpu/gelu.h plus a Context. T is float or __nv_bfloat16; arithmetic is fp32.
// All pointers are device pointers; both calls are queued on ctx.stream.
//
//   gelu_forward<__nv_bfloat16>(ctx, out, inp, B * T * 4 * C);
//   ...
//   gelu_backward<__nv_bfloat16>(ctx, dinp, inp, dout, B * T * 4 * C);
#pragma once
#include <cuda_bf16.h>

#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// out (n) = gelu(inp (n)) — overwritten. out may alias inp.
template <typename T>
void gelu_forward(const Context& ctx, T* out, const T* inp, size_t n);

// dinp (n) = gelu'(inp (n)) · dout (n) — overwritten. dinp may alias dout.
template <typename T>
void gelu_backward(const Context& ctx, T* dinp, const T* inp, const T* dout, size_t n);

// SwiGLU: out (N, F) = silu(gate) ∘ up from inp (N, 2F) rows [gate | up] — overwritten.
template <typename T>
void swiglu_forward(const Context& ctx, T* out, const T* inp, int N, int F);

// dinp (N, 2F) — overwritten — from dout (N, F) and the forward's inp.
template <typename T>
void swiglu_backward(const Context& ctx, T* dinp, const T* inp, const T* dout, int N, int F);

}  // namespace loom::kernels::cuda
