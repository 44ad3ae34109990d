#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cross_entropy.h"

namespace loom::kernels::cuda {
namespace {

constexpr int kSoftmaxThreads = 512;
// Logits each thread holds in registers per segment of the gradient pass (see below).
constexpr int kValuesPerThread = 8;
constexpr int kLossThreads = 256;

// Bytes of the (chunk, V) logits block, rounded up so the row losses after it stay aligned.
size_t logits_bytes(int chunk, int V) {
  const size_t bytes = static_cast<size_t>(chunk) * V * sizeof(float);
  return (bytes + 255) / 256 * 256;
}

// A softmax denominator under construction: Σ exp(x − max) over the values seen so far.
struct MaxSum {
  float max;
  float sum;
};

// Merges two partial denominators. Symmetric in its arguments (so butterfly partners agree);
// an empty side (max = −inf) is skipped rather than producing exp(−inf + inf) = NaN.
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  const float max = fmaxf(a.max, b.max);
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const MaxSum other = {__shfl_xor_sync(kFullMask, x.max, offset),
                          __shfl_xor_sync(kFullMask, x.sum, offset)};
    x = combine(x, other);
  }
  return x;
}

// One block per row of the chunk. logits (rows, V) fp32 in; row_loss (rows) out; when
// write_grad, each row is overwritten by dlogits = (softmax − onehot) · grad_scale as Act.
template <typename Act>
__global__ void __launch_bounds__(kSoftmaxThreads)
    softmax_cross_entropy_kernel(float* logits, float* row_loss, const int* targets, int V,
                                 float grad_scale, bool write_grad) {
  __shared__ MaxSum warp_partials[kSoftmaxThreads / kWarpSize];
  __shared__ MaxSum row_total;
  float* row = logits + static_cast<size_t>(blockIdx.x) * V;
  const int target = targets[blockIdx.x];
  const bool target_valid = target >= 0 && target < V;

  // Pass 1: the row's max and Σexp in one read, each thread over a fixed stride of columns.
  MaxSum local = {-INFINITY, 0.0f};
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = row[v];
    if (x > local.max) {
      local.sum = local.sum * expf(local.max - x) + 1.0f;
      local.max = x;
    } else {
      local.sum += expf(x - local.max);
    }
  }
  local = warp_combine(local);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_partials[warp] = local;
  // Read before the barrier: the gradient pass below may overwrite it.
  const float target_logit = threadIdx.x == 0 && target_valid ? row[target] : NAN;
  __syncthreads();
  if (warp == 0) {
    MaxSum x = lane < static_cast<int>(blockDim.x / kWarpSize) ? warp_partials[lane]
                                                               : MaxSum{-INFINITY, 0.0f};
    x = warp_combine(x);
    if (lane == 0) {
      row_total = x;
      row_loss[blockIdx.x] =
          static_cast<float>(static_cast<double>(x.max) + log(static_cast<double>(x.sum)) -
                             static_cast<double>(target_logit));
    }
  }
  __syncthreads();
  if (!write_grad) return;

  // Pass 2: dlogits in place. For bf16 the row's gradient is written over the first half of its
  // own fp32 storage (element v at byte 2v), so a write can land on a logit not yet read: the
  // row goes in segments, each fully read into registers before any of it is written. Writes of
  // a segment end at byte 2·(segment end), before any later segment's logits, which start at
  // byte 4·(segment end).
  const MaxSum total = row_total;
  const float factor = grad_scale / total.sum;
  Act* grad_row = reinterpret_cast<Act*>(row);
  constexpr int kSegment = kSoftmaxThreads * kValuesPerThread;
  for (int base = 0; base < V; base += kSegment) {
    float values[kValuesPerThread];
#pragma unroll
    for (int k = 0; k < kValuesPerThread; k++) {
      const int v = base + k * kSoftmaxThreads + threadIdx.x;
      values[k] = v < V ? row[v] : 0.0f;
    }
    if constexpr (sizeof(Act) < sizeof(float)) __syncthreads();
#pragma unroll
    for (int k = 0; k < kValuesPerThread; k++) {
      const int v = base + k * kSoftmaxThreads + threadIdx.x;
      if (v >= V) continue;
      float grad = expf(values[k] - total.max) * factor;
      if (v == target) grad -= grad_scale;
      grad_row[v] = from_float<Act>(grad);
    }
  }
}

// *loss_sum += Σ row_loss[0 … rows) in double, in a fixed order.
__global__ void __launch_bounds__(kLossThreads)
    add_row_losses_kernel(double* loss_sum, const float* row_loss, int rows) {
  double sum = 0.0;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) sum += row_loss[r];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *loss_sum += sum;
}

}  // namespace

size_t lm_head_scratch_bytes(int chunk, int V) {
  return logits_bytes(chunk, V) + static_cast<size_t>(chunk) * sizeof(float);
}

template <typename Act>
void lm_head_cross_entropy(const Context& ctx, double* loss_sum, Act* dx, float* dweight,
                           const Act* x, const Act* weight, const int* targets, int N, int C, int V,
                           float grad_scale, void* scratch, int chunk, MatmulCache* cache) {
  if (chunk <= 0 || N < 0 || C <= 0 || V <= 0) {
    throw std::invalid_argument(
        "lm_head_cross_entropy: need chunk, C, V > 0 and N ≥ 0 (chunk=" + std::to_string(chunk) +
        " N=" + std::to_string(N) + " C=" + std::to_string(C) + " V=" + std::to_string(V) + ")");
  }
  CUDA_CHECK(cudaMemsetAsync(loss_sum, 0, sizeof(double), ctx.stream));
  float* logits = static_cast<float*>(scratch);  // (chunk, V)
  float* row_loss = reinterpret_cast<float*>(static_cast<char*>(scratch) + logits_bytes(chunk, V));
  const cudaDataType_t type = data_type_of<Act>();
  // dlogits rows keep the fp32 rows' pitch: V floats hold 2V bf16.
  const int64_t grad_ld = static_cast<int64_t>(V) * (sizeof(float) / sizeof(Act));
  const Act* dlogits = reinterpret_cast<const Act*>(logits);
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int rows = std::min(chunk, N - n0);
    const Act* x_chunk = x + static_cast<size_t>(n0) * C;

    // logits (rows, V) = x_chunk (rows, C) · weight (V, C)ᵀ, fp32 out.
    Gemm forward;
    forward.M = rows;
    forward.N = V;
    forward.K = C;
    forward.a = x_chunk;
    forward.lda = C;
    forward.b = weight;
    forward.ldb = C;
    forward.trans_b = true;
    forward.d = logits;
    forward.ldd = V;
    forward.ab_type = type;
    forward.d_type = CUDA_R_32F;
    gemm(ctx, forward, cache);

    softmax_cross_entropy_kernel<Act><<<rows, kSoftmaxThreads, 0, ctx.stream>>>(
        logits, row_loss, targets + n0, V, grad_scale, dx != nullptr);
    CUDA_CHECK_LAUNCH();
    add_row_losses_kernel<<<1, kLossThreads, 0, ctx.stream>>>(loss_sum, row_loss, rows);
    CUDA_CHECK_LAUNCH();
    if (dx == nullptr) continue;

    // dx_chunk (rows, C) = dlogits (rows, V) · weight (V, C)
    Gemm input_grad;
    input_grad.M = rows;
    input_grad.N = C;
    input_grad.K = V;
    input_grad.a = dlogits;
    input_grad.lda = grad_ld;
    input_grad.b = weight;
    input_grad.ldb = C;
    input_grad.d = dx + static_cast<size_t>(n0) * C;
    input_grad.ldd = C;
    input_grad.ab_type = input_grad.d_type = type;
    gemm(ctx, input_grad, cache);

    // dweight (V, C) += dlogitsᵀ · x_chunk
    if (dweight != nullptr) {
      Gemm weight_grad;
      weight_grad.M = V;
      weight_grad.N = C;
      weight_grad.K = rows;
      weight_grad.a = dlogits;
      weight_grad.lda = grad_ld;
      weight_grad.trans_a = true;
      weight_grad.b = x_chunk;
      weight_grad.ldb = C;
      weight_grad.d = dweight;
      weight_grad.ldd = C;
      weight_grad.ab_type = type;
      weight_grad.d_type = CUDA_R_32F;
      weight_grad.beta = 1.0f;
      gemm(ctx, weight_grad, cache);
    }
  }
}

namespace {

constexpr int kLocalThreads = 256;

template <typename Act>
__global__ void __launch_bounds__(kLocalThreads)
    local_max_kernel(float* row_max, const Act* logits, int Vl, int valid) {
  const Act* row = logits + static_cast<size_t>(blockIdx.x) * Vl;
  float max = -INFINITY;
  for (int v = threadIdx.x; v < valid; v += blockDim.x) max = fmaxf(max, to_float(row[v]));
  max = block_max(max, -INFINITY);
  if (threadIdx.x == 0) row_max[blockIdx.x] = max;
}

template <typename Act>
__global__ void __launch_bounds__(kLocalThreads)
    local_sums_kernel(float* sums, const Act* logits, const float* row_max, const int* targets,
                      int Vl, int valid, int vocab_begin) {
  const Act* row = logits + static_cast<size_t>(blockIdx.x) * Vl;
  const float max = row_max[blockIdx.x];
  float sum = 0.0f;
  for (int v = threadIdx.x; v < valid; v += blockDim.x) sum += expf(to_float(row[v]) - max);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    const int target = targets[blockIdx.x] - vocab_begin;
    sums[2 * blockIdx.x] = sum;
    sums[2 * blockIdx.x + 1] = target >= 0 && target < valid ? to_float(row[target]) : 0.0f;
  }
}

__global__ void __launch_bounds__(kLocalThreads)
    local_loss_kernel(double* loss_sum, const float* row_max, const float* sums, int n) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    sum += static_cast<double>(row_max[i]) + log(static_cast<double>(sums[2 * i])) - sums[2 * i + 1];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *loss_sum = sum;
}

template <typename Act>
__global__ void __launch_bounds__(kLocalThreads)
    local_grad_kernel(Act* logits, const float* row_max, const float* sums, const int* targets,
                      int Vl, int valid, int vocab_begin, float grad_scale) {
  Act* row = logits + static_cast<size_t>(blockIdx.x) * Vl;
  const float max = row_max[blockIdx.x];
  const float factor = grad_scale / sums[2 * blockIdx.x];
  const int target = targets[blockIdx.x] - vocab_begin;
  for (int v = threadIdx.x; v < Vl; v += blockDim.x) {
    float g = 0.0f;
    if (v < valid) {
      g = expf(to_float(row[v]) - max) * factor;
      if (v == target) g -= grad_scale;
    }
    row[v] = from_float<Act>(g);
  }
}

}  // namespace

template <typename Act>
void cross_entropy_local_max(const Context& ctx, float* row_max, const Act* logits, int n, int Vl,
                             int valid) {
  if (n == 0) return;
  local_max_kernel<<<n, kLocalThreads, 0, ctx.stream>>>(row_max, logits, Vl, valid);
  CUDA_CHECK_LAUNCH();
}

template <typename Act>
void cross_entropy_local_sums(const Context& ctx, float* sums, const Act* logits,
                              const float* row_max, const int* targets, int n, int Vl, int valid,
                              int vocab_begin) {
  if (n == 0) return;
  local_sums_kernel<<<n, kLocalThreads, 0, ctx.stream>>>(sums, logits, row_max, targets, Vl, valid,
                                                         vocab_begin);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_local_loss(const Context& ctx, double* loss_sum, const float* row_max,
                              const float* sums, int n) {
  local_loss_kernel<<<1, kLocalThreads, 0, ctx.stream>>>(loss_sum, row_max, sums, n);
  CUDA_CHECK_LAUNCH();
}

template <typename Act>
void cross_entropy_local_grad(const Context& ctx, Act* logits, const float* row_max,
                              const float* sums, const int* targets, int n, int Vl, int valid,
                              int vocab_begin, float grad_scale) {
  if (n == 0) return;
  local_grad_kernel<<<n, kLocalThreads, 0, ctx.stream>>>(logits, row_max, sums, targets, Vl, valid,
                                                         vocab_begin, grad_scale);
  CUDA_CHECK_LAUNCH();
}

#define LOOM_LOCAL_CE(Act)                                                                      \
  template void cross_entropy_local_max<Act>(const Context&, float*, const Act*, int, int, int); \
  template void cross_entropy_local_sums<Act>(const Context&, float*, const Act*, const float*,  \
                                              const int*, int, int, int, int);                   \
  template void cross_entropy_local_grad<Act>(const Context&, Act*, const float*, const float*,  \
                                              const int*, int, int, int, int, float);
LOOM_LOCAL_CE(float)
LOOM_LOCAL_CE(__nv_bfloat16)
#undef LOOM_LOCAL_CE

template void lm_head_cross_entropy<float>(const Context&, double*, float*, float*, const float*,
                                           const float*, const int*, int, int, int, float, void*,
                                           int, MatmulCache*);
template void lm_head_cross_entropy<__nv_bfloat16>(const Context&, double*, __nv_bfloat16*, float*,
                                                   const __nv_bfloat16*, const __nv_bfloat16*,
                                                   const int*, int, int, int, float, void*, int,
                                                   MatmulCache*);

}  // namespace loom::kernels::cuda
