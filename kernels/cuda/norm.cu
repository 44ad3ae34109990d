#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/norm.h"

namespace loom::kernels::cuda {
namespace {

// Row kernels: one warp per row, kRowsPerBlock rows per block. A warp needs no shared memory or
// block barrier for its reductions, and a row of a few thousand columns is a few loads per lane.
constexpr int kRowsPerBlock = 4;
// Parameter-gradient kernels: blocks of kColumnTile columns × kRowLanes threads over a tile of
// kRowTile rows.
constexpr int kColumnTile = 32;
constexpr int kRowLanes = 8;
constexpr int kRowTile = 128;
constexpr int kReduceThreads = 256;

int row_tiles(int N) { return static_cast<int>(ceil_div(N, kRowTile)); }

// The lane's columns of a row come in groups of kWidth (1, or a 16-byte pack).
#define LOOM_FOR_EACH_GROUP(c, C, kWidth) \
  for (int c = (threadIdx.x % kWarpSize) * (kWidth); c < (C); c += kWarpSize * (kWidth))

// kLayerNorm: subtract the mean and add the bias; otherwise RMSNorm (mean, bias unused).
template <typename T, int kWidth, bool kLayerNorm>
__global__ void norm_forward_kernel(T* __restrict__ out, float* __restrict__ mean,
                                    float* __restrict__ rstd, const T* __restrict__ inp,
                                    const T* __restrict__ weight, const T* __restrict__ bias, int N,
                                    int C, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;  // whole warps leave together
  const T* x_row = inp + static_cast<size_t>(row) * C;
  T* y_row = out + static_cast<size_t>(row) * C;

  float m = 0.0f;
  if constexpr (kLayerNorm) {
    float sum = 0.0f;
    LOOM_FOR_EACH_GROUP(c, C, kWidth) {
      float x[kWidth];
      load_as_float<kWidth>(x_row + c, x);
#pragma unroll
      for (int k = 0; k < kWidth; k++) sum += x[k];
    }
    m = warp_sum(sum) / C;
  }
  // Centred squares in a second pass (the row is in L1 by now) rather than E[x²] − E[x]², which
  // cancels badly for rows with a large mean.
  float squares = 0.0f;
  LOOM_FOR_EACH_GROUP(c, C, kWidth) {
    float x[kWidth];
    load_as_float<kWidth>(x_row + c, x);
#pragma unroll
    for (int k = 0; k < kWidth; k++) squares += (x[k] - m) * (x[k] - m);
  }
  const float r = 1.0f / sqrtf(warp_sum(squares) / C + eps);

  LOOM_FOR_EACH_GROUP(c, C, kWidth) {
    float x[kWidth], w[kWidth], y[kWidth];
    load_as_float<kWidth>(x_row + c, x);
    load_as_float<kWidth>(weight + c, w);
    if constexpr (kLayerNorm) {
      float b[kWidth];
      load_as_float<kWidth>(bias + c, b);
#pragma unroll
      for (int k = 0; k < kWidth; k++) y[k] = (x[k] - m) * r * w[k] + b[k];
    } else {
#pragma unroll
      for (int k = 0; k < kWidth; k++) y[k] = x[k] * r * w[k];
    }
    store_from_float<kWidth>(y_row + c, y);
  }
  if (threadIdx.x % kWarpSize == 0) {
    if constexpr (kLayerNorm) mean[row] = m;
    rstd[row] = r;
  }
}

// dinp += the input gradient, one warp per row. dinp may alias dout: every lane reads its
// dout elements in the first pass, and in the second reads each element before writing it.
template <typename T, int kWidth, bool kLayerNorm>
__global__ void norm_backward_input_kernel(T* dinp, const T* dout, const T* __restrict__ inp,
                                           const T* __restrict__ weight,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ rstd, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= N) return;
  const size_t offset = static_cast<size_t>(row) * C;
  const float m = kLayerNorm ? mean[row] : 0.0f;
  const float r = rstd[row];

  float dnorm_sum = 0.0f;
  float dnorm_norm_sum = 0.0f;
  LOOM_FOR_EACH_GROUP(c, C, kWidth) {
    float x[kWidth], dy[kWidth], w[kWidth];
    load_as_float<kWidth>(inp + offset + c, x);
    load_as_float<kWidth>(dout + offset + c, dy);
    load_as_float<kWidth>(weight + c, w);
#pragma unroll
    for (int k = 0; k < kWidth; k++) {
      const float norm = (x[k] - m) * r;
      const float dnorm = dy[k] * w[k];
      dnorm_sum += dnorm;
      dnorm_norm_sum += dnorm * norm;
    }
  }
  const float dnorm_mean = kLayerNorm ? warp_sum(dnorm_sum) / C : 0.0f;
  const float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / C;

  LOOM_FOR_EACH_GROUP(c, C, kWidth) {
    float x[kWidth], dy[kWidth], w[kWidth], dx[kWidth];
    load_as_float<kWidth>(inp + offset + c, x);
    load_as_float<kWidth>(dout + offset + c, dy);
    load_as_float<kWidth>(weight + c, w);
    load_as_float<kWidth>(dinp + offset + c, dx);
#pragma unroll
    for (int k = 0; k < kWidth; k++) {
      const float norm = (x[k] - m) * r;
      const float dnorm = dy[k] * w[k];
      dx[k] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
    }
    store_from_float<kWidth>(dinp + offset + c, dx);
  }
}

// Block (column tile, row tile): partials[tile, c] = Σ over the tile's rows of dout·norm (and,
// with a bias, partials[tiles + tile, c] = Σ dout). Each thread sums every kRowLanes-th row of
// the tile in order; the lanes are then added in lane order.
template <typename T, bool kLayerNorm>
__global__ void norm_parameter_partials(float* __restrict__ partials, const T* __restrict__ dout,
                                        const T* __restrict__ inp, const float* __restrict__ mean,
                                        const float* __restrict__ rstd, int N, int C) {
  __shared__ float dw_lanes[kRowLanes][kColumnTile];
  __shared__ float db_lanes[kRowLanes][kColumnTile];
  const int c = blockIdx.x * kColumnTile + threadIdx.x;
  const int tile = blockIdx.y;
  const int row_end = min(N, (tile + 1) * kRowTile);
  float dw = 0.0f;
  float db = 0.0f;
  if (c < C) {
    for (int row = tile * kRowTile + threadIdx.y; row < row_end; row += kRowLanes) {
      const size_t at = static_cast<size_t>(row) * C + c;
      const float dy = to_float(dout[at]);
      const float m = kLayerNorm ? mean[row] : 0.0f;
      dw += dy * ((to_float(inp[at]) - m) * rstd[row]);
      db += dy;
    }
  }
  dw_lanes[threadIdx.y][threadIdx.x] = dw;
  db_lanes[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int lane = 1; lane < kRowLanes; lane++) {
    dw += dw_lanes[lane][threadIdx.x];
    db += db_lanes[lane][threadIdx.x];
  }
  partials[static_cast<size_t>(tile) * C + c] = dw;
  if constexpr (kLayerNorm) partials[(static_cast<size_t>(gridDim.y) + tile) * C + c] = db;
}

// dweight[c] += Σ_tile partials[tile, c] in tile order (dbias likewise from the second half).
__global__ void norm_parameter_finish(float* __restrict__ dweight, float* __restrict__ dbias,
                                      const float* __restrict__ partials, int tiles, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float dw = 0.0f;
  for (int tile = 0; tile < tiles; tile++) dw += partials[static_cast<size_t>(tile) * C + c];
  dweight[c] += dw;
  if (dbias != nullptr) {
    float db = 0.0f;
    for (int tile = 0; tile < tiles; tile++) {
      db += partials[(static_cast<size_t>(tiles) + tile) * C + c];
    }
    dbias[c] += db;
  }
}

template <typename T, bool kLayerNorm>
void norm_forward(const Context& ctx, T* out, float* mean, float* rstd, const T* inp,
                  const T* weight, const T* bias, int N, int C, float eps) {
  if (N == 0 || C == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, kRowsPerBlock));
  const unsigned threads = kRowsPerBlock * kWarpSize;
  const bool packed = kLayerNorm ? can_vectorize<T>(C, out, inp, weight, bias)
                                 : can_vectorize<T>(C, out, inp, weight);
  if (packed) {
    norm_forward_kernel<T, Pack<T>::kSize, kLayerNorm>
        <<<blocks, threads, 0, ctx.stream>>>(out, mean, rstd, inp, weight, bias, N, C, eps);
  } else {
    norm_forward_kernel<T, 1, kLayerNorm>
        <<<blocks, threads, 0, ctx.stream>>>(out, mean, rstd, inp, weight, bias, N, C, eps);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T, bool kLayerNorm>
void norm_backward(const Context& ctx, T* dinp, float* dweight, float* dbias, const T* dout,
                   const T* inp, const T* weight, const float* mean, const float* rstd, int N,
                   int C, void* scratch) {
  if (N == 0 || C == 0) return;
  // Parameter gradients first: they read dout, which the input gradient may overwrite when
  // dinp aliases dout.
  auto* partials = static_cast<float*>(scratch);
  const int tiles = row_tiles(N);
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kColumnTile)), static_cast<unsigned>(tiles));
  norm_parameter_partials<T, kLayerNorm><<<grid, dim3(kColumnTile, kRowLanes), 0, ctx.stream>>>(
      partials, dout, inp, mean, rstd, N, C);
  CUDA_CHECK_LAUNCH();
  norm_parameter_finish<<<static_cast<unsigned>(ceil_div(C, kReduceThreads)), kReduceThreads, 0,
                          ctx.stream>>>(dweight, kLayerNorm ? dbias : nullptr, partials, tiles, C);
  CUDA_CHECK_LAUNCH();

  const unsigned blocks = static_cast<unsigned>(ceil_div(N, kRowsPerBlock));
  const unsigned threads = kRowsPerBlock * kWarpSize;
  if (can_vectorize<T>(C, dinp, dout, inp, weight)) {
    norm_backward_input_kernel<T, Pack<T>::kSize, kLayerNorm>
        <<<blocks, threads, 0, ctx.stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  } else {
    norm_backward_input_kernel<T, 1, kLayerNorm>
        <<<blocks, threads, 0, ctx.stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

template <typename T>
void layernorm_forward(const Context& ctx, T* out, float* mean, float* rstd, const T* inp,
                       const T* weight, const T* bias, int N, int C, float eps) {
  norm_forward<T, true>(ctx, out, mean, rstd, inp, weight, bias, N, C, eps);
}

size_t layernorm_backward_scratch_bytes(int N, int C) {
  return 2 * static_cast<size_t>(row_tiles(N)) * C * sizeof(float);
}

template <typename T>
void layernorm_backward(const Context& ctx, T* dinp, float* dweight, float* dbias, const T* dout,
                        const T* inp, const T* weight, const float* mean, const float* rstd, int N,
                        int C, void* scratch) {
  norm_backward<T, true>(ctx, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, scratch);
}

template <typename T>
void rmsnorm_forward(const Context& ctx, T* out, float* rstd, const T* inp, const T* weight, int N,
                     int C, float eps) {
  norm_forward<T, false>(ctx, out, nullptr, rstd, inp, weight, nullptr, N, C, eps);
}

size_t rmsnorm_backward_scratch_bytes(int N, int C) {
  return static_cast<size_t>(row_tiles(N)) * C * sizeof(float);
}

template <typename T>
void rmsnorm_backward(const Context& ctx, T* dinp, float* dweight, const T* dout, const T* inp,
                      const T* weight, const float* rstd, int N, int C, void* scratch) {
  norm_backward<T, false>(ctx, dinp, dweight, nullptr, dout, inp, weight, nullptr, rstd, N, C,
                          scratch);
}

#define LOOM_INSTANTIATE_NORM(T)                                                              \
  template void layernorm_forward<T>(const Context&, T*, float*, float*, const T*, const T*,  \
                                     const T*, int, int, float);                              \
  template void layernorm_backward<T>(const Context&, T*, float*, float*, const T*, const T*, \
                                      const T*, const float*, const float*, int, int, void*); \
  template void rmsnorm_forward<T>(const Context&, T*, float*, const T*, const T*, int, int,  \
                                   float);                                                    \
  template void rmsnorm_backward<T>(const Context&, T*, float*, const T*, const T*, const T*, \
                                    const float*, int, int, void*);
LOOM_INSTANTIATE_NORM(float)
LOOM_INSTANTIATE_NORM(__nv_bfloat16)
#undef LOOM_INSTANTIATE_NORM
#undef LOOM_FOR_EACH_GROUP

}  // namespace loom::kernels::cuda
