#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/routing.h"

namespace loom::kernels::cuda {
namespace {

// One warp per row, kRowsPerBlock rows per block. Each lane walks its row kWidth elements at a
// time: a 16-byte pack when the row length and the pointers allow it, one element otherwise.
constexpr int kRowsPerBlock = 8;
constexpr int kBlockSize = kRowsPerBlock * kWarpSize;

template <typename T, int kWidth>
__global__ void gather_rows_kernel(T* __restrict__ dst, const T* __restrict__ src,
                                   const int* __restrict__ rows, const float* __restrict__ scale,
                                   int n, int C) {
  const int i = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (i >= n) return;
  const int lane = threadIdx.x % kWarpSize;
  const float s = scale ? scale[i] : 1.0f;
  const T* x = src + static_cast<size_t>(rows[i]) * C;
  T* y = dst + static_cast<size_t>(i) * C;
  for (int c = lane * kWidth; c < C; c += kWarpSize * kWidth) {
    float v[kWidth];
    load_as_float<kWidth>(x + c, v);
#pragma unroll
    for (int k = 0; k < kWidth; k++) v[k] *= s;
    store_from_float<kWidth>(y + c, v);
  }
}

template <typename T, int kWidth>
__global__ void scatter_add_rows_kernel(T* dst, const T* src, const int* __restrict__ rows,
                                        const float* __restrict__ scale, float factor, int n,
                                        int C) {
  const int i = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (i >= n) return;
  const int lane = threadIdx.x % kWarpSize;
  const float s = scale ? factor * scale[i] : factor;
  const T* x = src + static_cast<size_t>(i) * C;
  T* y = dst + static_cast<size_t>(rows[i]) * C;
  for (int c = lane * kWidth; c < C; c += kWarpSize * kWidth) {
    float u[kWidth], v[kWidth];
    load_as_float<kWidth>(x + c, u);
    load_as_float<kWidth>(y + c, v);
#pragma unroll
    for (int k = 0; k < kWidth; k++) v[k] += s * u[k];
    store_from_float<kWidth>(y + c, v);
  }
}

// The warp's row is uniform, so a warp leaves as a whole and warp_sum sees all its lanes.
template <typename T, int kWidth>
__global__ void row_dots_kernel(float* __restrict__ out, const T* __restrict__ a,
                                const T* __restrict__ b, const int* __restrict__ rows, int n,
                                int C) {
  const int i = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (i >= n) return;
  const int lane = threadIdx.x % kWarpSize;
  const T* x = a + static_cast<size_t>(rows[i]) * C;
  const T* y = b + static_cast<size_t>(i) * C;
  float sum = 0.0f;
  for (int c = lane * kWidth; c < C; c += kWarpSize * kWidth) {
    float u[kWidth], v[kWidth];
    load_as_float<kWidth>(x + c, u);
    load_as_float<kWidth>(y + c, v);
#pragma unroll
    for (int k = 0; k < kWidth; k++) sum += u[k] * v[k];
  }
  sum = warp_sum(sum);
  if (lane == 0) out[i] = sum;
}

unsigned row_blocks(int n) { return static_cast<unsigned>(ceil_div(n, kRowsPerBlock)); }

}  // namespace

template <typename T>
void gather_rows(const Context& ctx, T* dst, const T* src, const int* rows, const float* scale,
                 int n, int C) {
  if (n <= 0 || C <= 0) return;
  if (can_vectorize<T>(C, dst, src)) {
    gather_rows_kernel<T, Pack<T>::kSize>
        <<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(dst, src, rows, scale, n, C);
  } else {
    gather_rows_kernel<T, 1>
        <<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(dst, src, rows, scale, n, C);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void scatter_add_rows(const Context& ctx, T* dst, const T* src, const int* rows, const float* scale,
                      float factor, int n, int C) {
  if (n <= 0 || C <= 0) return;
  if (can_vectorize<T>(C, dst, src)) {
    scatter_add_rows_kernel<T, Pack<T>::kSize>
        <<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(dst, src, rows, scale, factor, n, C);
  } else {
    scatter_add_rows_kernel<T, 1>
        <<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(dst, src, rows, scale, factor, n, C);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void row_dots(const Context& ctx, float* out, const T* a, const T* b, const int* rows, int n,
              int C) {
  if (n <= 0) return;
  if (can_vectorize<T>(C, a, b)) {
    row_dots_kernel<T, Pack<T>::kSize>
        <<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(out, a, b, rows, n, C);
  } else {
    row_dots_kernel<T, 1><<<row_blocks(n), kBlockSize, 0, ctx.stream>>>(out, a, b, rows, n, C);
  }
  CUDA_CHECK_LAUNCH();
}

template void gather_rows<float>(const Context&, float*, const float*, const int*, const float*,
                                 int, int);
template void gather_rows<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                         const int*, const float*, int, int);
template void scatter_add_rows<float>(const Context&, float*, const float*, const int*,
                                      const float*, float, int, int);
template void scatter_add_rows<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                              const int*, const float*, float, int, int);
template void row_dots<float>(const Context&, float*, const float*, const float*, const int*, int,
                              int);
template void row_dots<__nv_bfloat16>(const Context&, float*, const __nv_bfloat16*,
                                      const __nv_bfloat16*, const int*, int, int);

}  // namespace loom::kernels::cuda
