// Row routing for Mixture-of-Recursions on the GPU; the API of kernels/cpu/routing.h plus a
// Context. T is float or __nv_bfloat16; arithmetic is fp32 (each result rounded to T once). All
// pointers are device pointers; every call is queued on ctx.stream. One warp per row, so the
// results are the same bits on every run.
//
//   gather_rows<__nv_bfloat16>(ctx, selected, hidden, rows, weights, n, C);
//   scatter_add_rows<__nv_bfloat16>(ctx, hidden, update, rows, weights, 1.0f, n, C);
//   row_dots<__nv_bfloat16>(ctx, dweights, hidden, dselected, rows, n, C);
#pragma once
#include <cuda_bf16.h>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// dst (n, C) — overwritten — row i = scale_i · src row rows[i], scale_i = scale ? scale[i] : 1
// (fp32). dst and src do not overlap.
template <typename T>
void gather_rows(const Context& ctx, T* dst, const T* src, const int* rows, const float* scale,
                 int n, int C);

// dst row rows[i] += factor · scale_i · src row i (scale_i as above), for i < n. The rows are
// distinct.
template <typename T>
void scatter_add_rows(const Context& ctx, T* dst, const T* src, const int* rows, const float* scale,
                      float factor, int n, int C);

// out[i] (fp32) = Σ_c a[rows[i], c] · b[i, c] — overwritten — summed in fp32.
template <typename T>
void row_dots(const Context& ctx, float* out, const T* a, const T* b, const int* rows, int n,
              int C);

}  // namespace loom::kernels::cuda
