// Elementwise and reduction helpers over flat device buffers; the API of kernels/cpu/vector.h
// plus a Context. Reductions write their result to device memory (no host round trip, no
// synchronisation: the caller copies the scalar back when it needs it) and are deterministic:
// a fixed grid of kVectorReduceBlocks blocks, each summing a fixed interleaved slice of the
// range in double, then one block combining the partials in a fixed order — the same bits on
// every run, whatever the GPU.
//
//   DeviceMemory scratch = device_alloc(vector_reduce_scratch_bytes());
//   vector_sum_squares(ctx, d_norm_squared, grads, n, scratch.get());   // global grad norm²
//   vector_all_finite(ctx, d_ok, grads, n, scratch.get());
#pragma once
#include <cuda_bf16.h>

#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// y (n) += x (n). T is float or __nv_bfloat16 (the sum is formed in fp32, then rounded).
template <typename T>
void vector_add(const Context& ctx, T* y, const T* x, size_t n);

// y (n) = a (n) + b (n) — overwritten. y may alias a or b.
template <typename T>
void vector_sum(const Context& ctx, T* y, const T* a, const T* b, size_t n);

// dst (n) = src (n) converted: fp32 → bf16 rounds to nearest even; bf16 → fp32 is exact.
// (Dst, Src) is (__nv_bfloat16, float) or (float, __nv_bfloat16).
template <typename Dst, typename Src>
void vector_convert(const Context& ctx, Dst* dst, const Src* src, size_t n);

// Bytes of device scratch that vector_sum_squares and vector_all_finite need (independent of n).
size_t vector_reduce_scratch_bytes();

// *result (one double, device) = Σ x² over x (n), summed in double — overwritten.
// scratch: vector_reduce_scratch_bytes() bytes of device memory, 16-byte aligned.
void vector_sum_squares(const Context& ctx, double* result, const float* x, size_t n,
                        void* scratch);

// *result (one int, device) = 1 when no element of x (n) is NaN or ±Inf, else 0 — overwritten.
// scratch: vector_reduce_scratch_bytes() bytes of device memory, 16-byte aligned.
void vector_all_finite(const Context& ctx, int* result, const float* x, size_t n, void* scratch);

}  // namespace loom::kernels::cuda
