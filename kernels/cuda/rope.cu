#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rope.h"

namespace loom::kernels::cuda {
namespace {

constexpr int kBlockSize = 256;

__global__ void rope_table_kernel(float* __restrict__ cos_table, float* __restrict__ sin_table,
                                  int T, int hd, float theta, int first_position) {
  const int half = hd / 2;
  const size_t total = static_cast<size_t>(T) * half;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total;
       i += size_t{gridDim.x} * blockDim.x) {
    const int t = static_cast<int>(i / half);
    const int d = static_cast<int>(i % half);
    // Double: at t in the thousands the angle is thousands of radians (see kernels/cpu/rope.cpp).
    const double frequency = pow(static_cast<double>(theta), -2.0 * d / hd);
    const double angle = (static_cast<double>(first_position) + t) * frequency;
    cos_table[i] = static_cast<float>(cos(angle));
    sin_table[i] = static_cast<float>(sin(angle));
  }
}

// One thread per kWidth consecutive d of one (b, t, head) with head over the H q and kv_heads k
// heads.
template <typename Act, int kWidth>
__global__ void rope_apply_kernel(Act* __restrict__ qkv, const float* __restrict__ cos_table,
                                  const float* __restrict__ sin_table, int T, int C, int H,
                                  int kv_heads, float sign, size_t total) {
  const int hd = C / H;
  const int half = hd / 2;
  const int groups = half / kWidth;  // per head
  const int heads = H + kv_heads;    // rotated per row
  const size_t width = static_cast<size_t>(C) + 2 * static_cast<size_t>(kv_heads) * hd;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total;
       i += size_t{gridDim.x} * blockDim.x) {
    const int d = static_cast<int>(i % groups) * kWidth;
    const size_t head_index = i / groups;  // (b·T + t)·heads + head
    const int head = static_cast<int>(head_index % heads);
    const size_t bt = head_index / heads;
    const int t = static_cast<int>(bt % T);
    // Heads of q then heads of k are contiguous: H + kv_heads heads of hd from the row start.
    Act* x1_ptr = qkv + bt * width + static_cast<size_t>(head) * hd + d;
    Act* x2_ptr = x1_ptr + half;
    float x1[kWidth], x2[kWidth];
    load_as_float<kWidth>(x1_ptr, x1);
    load_as_float<kWidth>(x2_ptr, x2);
    const float* cos_t = cos_table + static_cast<size_t>(t) * half + d;
    const float* sin_t = sin_table + static_cast<size_t>(t) * half + d;
    float y1[kWidth], y2[kWidth];
#pragma unroll
    for (int k = 0; k < kWidth; k++) {
      const float c = cos_t[k];
      const float s = sign * sin_t[k];
      y1[k] = x1[k] * c - x2[k] * s;
      y2[k] = x2[k] * c + x1[k] * s;
    }
    store_from_float<kWidth>(x1_ptr, y1);
    store_from_float<kWidth>(x2_ptr, y2);
  }
}

}  // namespace

void rope_table(const Context& ctx, float* cos, float* sin, int T, int hd, float theta,
                int first_position) {
  const size_t total = static_cast<size_t>(T) * (hd / 2);
  if (total == 0) return;
  rope_table_kernel<<<grid_stride_blocks(total, kBlockSize), kBlockSize, 0, ctx.stream>>>(
      cos, sin, T, hd, theta, first_position);
  CUDA_CHECK_LAUNCH();
}

template <typename Act>
void rope_apply(const Context& ctx, Act* qkv, const float* cos, const float* sin, int B, int T,
                int C, int H, int kv_heads, bool inverse) {
  const int half = C / H / 2;
  const size_t pairs = static_cast<size_t>(B) * T * (H + kv_heads) * half;
  if (pairs == 0) return;
  // The inverse rotation is the rotation by −θ: same cos, negated sin.
  const float sign = inverse ? -1.0f : 1.0f;
  constexpr int kPack = Pack<Act>::kSize;
  // Packs need every x1 and x2 start aligned: half a multiple of the pack (then hd and 3C are).
  if (can_vectorize<Act>(half, qkv)) {
    const size_t total = pairs / kPack;
    rope_apply_kernel<Act, kPack>
        <<<grid_stride_blocks(total, kBlockSize), kBlockSize, 0, ctx.stream>>>(
            qkv, cos, sin, T, C, H, kv_heads, sign, total);
  } else {
    rope_apply_kernel<Act, 1><<<grid_stride_blocks(pairs, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        qkv, cos, sin, T, C, H, kv_heads, sign, pairs);
  }
  CUDA_CHECK_LAUNCH();
}

template void rope_apply<float>(const Context&, float*, const float*, const float*, int, int, int,
                                int, int, bool);
template void rope_apply<__nv_bfloat16>(const Context&, __nv_bfloat16*, const float*, const float*,
                                        int, int, int, int, int, bool);

}  // namespace loom::kernels::cuda
