#include <cuda_bf16.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/common.cuh"

namespace loom::kernels::cuda {
namespace {

using namespace attention_tiles;

// Grid: x = b·H + h, y = query block, reversed so the longest blocks (most keys) start first.
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(Act* out, float* lse, const Act* qkv, int T, int C, int H, int hd,
                             float scale) {
  constexpr int kPitch = pitch<HD>();
  constexpr int kDims = (HD + 31) / 32;
  extern __shared__ float4 shared_storage[];
  float* q_tile = reinterpret_cast<float*>(shared_storage);  // (kBlockRows, kPitch)
  float* k_tile = q_tile + kBlockRows * kPitch;              // (kTile, kPitch)
  float* v_tile = k_tile + kTile * kPitch;                   // (kTile, kPitch)
  float* exchange = v_tile + kTile * kPitch;                 // (kWarps, kTile, kRowsPerWarp)

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pair = blockIdx.x;
  const int b = pair / H;
  const int h = pair % H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockRows;
  const int64_t ld = 3 * static_cast<int64_t>(C);
  const Act* q_base = qkv + static_cast<int64_t>(b) * T * ld + static_cast<int64_t>(h) * hd;
  const Act* k_base = q_base + C;
  const Act* v_base = q_base + 2 * C;
  float* warp_exchange = exchange + warp * kTile * kRowsPerWarp;
  const float* warp_rows = q_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(q_tile, q_base, ld, q0, T, hd);
  // Rows past T compute a copy of row T − 1 (keeping every lane in the shuffles) and are never
  // written.
  int query[kRowsPerWarp];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    query[r] = min(q0 + warp * kRowsPerWarp + r, T - 1);
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDims; c++) acc[r][c] = 0.0f;
  }

  const int key_end = min(q0 + kBlockRows, T);  // causal: no row here sees a later key
  for (int kv0 = 0; kv0 < key_end; kv0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_tile written, the first time)
    load_rows<Act, HD, kTile>(k_tile, k_base, ld, kv0, T, hd);
    load_rows<Act, HD, kTile>(v_tile, v_base, ld, kv0, T, hd);
    __syncthreads();
    float score[kRowsPerWarp] = {};
    dot_rows<HD>(score, warp_rows, k_tile + lane * kPitch);
    const int key = kv0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float s = key <= query[r] ? score[r] * scale : -INFINITY;
      const float new_max = fmaxf(row_max[r], warp_max(s));
      // A row with every key so far masked keeps max −inf; 0 as reference keeps exp finite.
      const float reference = new_max == -INFINITY ? 0.0f : new_max;
      const float p = expf(s - reference);
      const float correction = expf(row_max[r] - reference);
      row_sum[r] = row_sum[r] * correction + warp_sum(p);
      row_max[r] = new_max;
#pragma unroll
      for (int c = 0; c < kDims; c++) acc[r][c] *= correction;
      warp_exchange[lane * kRowsPerWarp + r] = p;
    }
    __syncwarp();
    accumulate_rows<HD>(acc, warp_exchange, v_tile, lane);
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int i = q0 + warp * kRowsPerWarp + r;
    if (i >= T) continue;
    const float inv_sum = 1.0f / row_sum[r];
    Act* out_row = out + (static_cast<int64_t>(b) * T + i) * C + static_cast<int64_t>(h) * hd;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) out_row[d] = from_float<Act>(acc[r][c] * inv_sum);
    }
    if (lane == 0) lse[static_cast<int64_t>(pair) * T + i] = row_max[r] + logf(row_sum[r]);
  }
}

// dsum (B, H, T) = Σ_d dout ∘ out over each head's hd columns; one warp per (b, t, h).
template <typename Act>
__global__ void attention_dsum_kernel(float* dsum, const Act* dout, const Act* out, int B, int T,
                                      int C, int H, int hd) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(B) * T * H) return;  // whole warps leave together
  const int h = static_cast<int>(row % H);
  const int64_t bt = row / H;
  const int t = static_cast<int>(bt % T);
  const int b = static_cast<int>(bt / T);
  const int64_t offset = bt * C + static_cast<int64_t>(h) * hd;
  float sum = 0.0f;
  for (int d = lane; d < hd; d += 32) sum += to_float(dout[offset + d]) * to_float(out[offset + d]);
  sum = warp_sum(sum);
  if (lane == 0) dsum[(static_cast<int64_t>(b) * H + h) * T + t] = sum;
}

// dQ for kBlockRows queries: Σ over keys j ≤ i of dS_ij k_j, with P_ij = exp(s_ij − lse_i) and
// dS_ij = P_ij (dO_i · v_j − dsum_i) · scale. Grid as in forward.
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(Act* dqkv, const Act* dout, const Act* qkv, const float* lse,
                                 const float* dsum, int T, int C, int H, int hd, float scale) {
  constexpr int kPitch = pitch<HD>();
  constexpr int kDims = (HD + 31) / 32;
  extern __shared__ float4 shared_storage[];
  float* q_tile = reinterpret_cast<float*>(shared_storage);  // (kBlockRows, kPitch)
  float* do_tile = q_tile + kBlockRows * kPitch;             // (kBlockRows, kPitch)
  float* k_tile = do_tile + kBlockRows * kPitch;             // (kTile, kPitch)
  float* v_tile = k_tile + kTile * kPitch;                   // (kTile, kPitch)
  float* exchange = v_tile + kTile * kPitch;                 // (kWarps, kTile, kRowsPerWarp)

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pair = blockIdx.x;
  const int b = pair / H;
  const int h = pair % H;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockRows;
  const int64_t ld = 3 * static_cast<int64_t>(C);
  const Act* q_base = qkv + static_cast<int64_t>(b) * T * ld + static_cast<int64_t>(h) * hd;
  const Act* do_base = dout + static_cast<int64_t>(b) * T * C + static_cast<int64_t>(h) * hd;
  float* warp_exchange = exchange + warp * kTile * kRowsPerWarp;
  const float* warp_q = q_tile + warp * kRowsPerWarp * kPitch;
  const float* warp_do = do_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(q_tile, q_base, ld, q0, T, hd);
  load_rows<Act, HD, kBlockRows>(do_tile, do_base, C, q0, T, hd);
  int query[kRowsPerWarp];
  float row_lse[kRowsPerWarp], row_dsum[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    query[r] = min(q0 + warp * kRowsPerWarp + r, T - 1);
    row_lse[r] = lse[static_cast<int64_t>(pair) * T + query[r]];
    row_dsum[r] = dsum[static_cast<int64_t>(pair) * T + query[r]];
#pragma unroll
    for (int c = 0; c < kDims; c++) acc[r][c] = 0.0f;
  }

  const int key_end = min(q0 + kBlockRows, T);
  for (int kv0 = 0; kv0 < key_end; kv0 += kTile) {
    __syncthreads();
    load_rows<Act, HD, kTile>(k_tile, q_base + C, ld, kv0, T, hd);
    load_rows<Act, HD, kTile>(v_tile, q_base + 2 * C, ld, kv0, T, hd);
    __syncthreads();
    float score[kRowsPerWarp] = {};
    float dp[kRowsPerWarp] = {};
    dot_rows<HD>(score, warp_q, k_tile + lane * kPitch);
    dot_rows<HD>(dp, warp_do, v_tile + lane * kPitch);
    const int key = kv0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float p = key <= query[r] ? expf(score[r] * scale - row_lse[r]) : 0.0f;
      warp_exchange[lane * kRowsPerWarp + r] = p * (dp[r] - row_dsum[r]) * scale;
    }
    __syncwarp();
    accumulate_rows<HD>(acc, warp_exchange, k_tile, lane);
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int i = q0 + warp * kRowsPerWarp + r;
    if (i >= T) continue;
    Act* dq_row = dqkv + static_cast<int64_t>(b) * T * ld + i * ld + static_cast<int64_t>(h) * hd;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) dq_row[d] = from_float<Act>(acc[r][c]);
    }
  }
}

// dK, dV for kBlockRows keys j: Σ over queries i ≥ j of dS_ij q_i and P_ij dO_i.
// Grid: x = b·H + h, y = key block (the first blocks see the most queries and start first).
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkv_kernel(Act* dqkv, const Act* dout, const Act* qkv, const float* lse,
                                  const float* dsum, int T, int C, int H, int hd, float scale) {
  constexpr int kPitch = pitch<HD>();
  constexpr int kDims = (HD + 31) / 32;
  extern __shared__ float4 shared_storage[];
  float* k_tile = reinterpret_cast<float*>(shared_storage);  // (kBlockRows, kPitch)
  float* v_tile = k_tile + kBlockRows * kPitch;              // (kBlockRows, kPitch)
  float* q_tile = v_tile + kBlockRows * kPitch;              // (kTile, kPitch)
  float* do_tile = q_tile + kTile * kPitch;                  // (kTile, kPitch)
  float* p_exchange = do_tile + kTile * kPitch;              // (kWarps, kTile, kRowsPerWarp)
  float* ds_exchange = p_exchange + kWarps * kTile * kRowsPerWarp;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int pair = blockIdx.x;
  const int b = pair / H;
  const int h = pair % H;
  const int k0 = blockIdx.y * kBlockRows;
  const int64_t ld = 3 * static_cast<int64_t>(C);
  const Act* q_base = qkv + static_cast<int64_t>(b) * T * ld + static_cast<int64_t>(h) * hd;
  const Act* do_base = dout + static_cast<int64_t>(b) * T * C + static_cast<int64_t>(h) * hd;
  float* warp_p = p_exchange + warp * kTile * kRowsPerWarp;
  float* warp_ds = ds_exchange + warp * kTile * kRowsPerWarp;
  const float* warp_k = k_tile + warp * kRowsPerWarp * kPitch;
  const float* warp_v = v_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(k_tile, q_base + C, ld, k0, T, hd);
  load_rows<Act, HD, kBlockRows>(v_tile, q_base + 2 * C, ld, k0, T, hd);
  int key[kRowsPerWarp];
  float dk[kRowsPerWarp][kDims], dv[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    key[r] = min(k0 + warp * kRowsPerWarp + r, T - 1);
#pragma unroll
    for (int c = 0; c < kDims; c++) dk[r][c] = dv[r][c] = 0.0f;
  }

  // Queries before k0 see none of these keys; start at the tile holding query k0.
  for (int qt0 = (k0 / kTile) * kTile; qt0 < T; qt0 += kTile) {
    __syncthreads();
    load_rows<Act, HD, kTile>(q_tile, q_base, ld, qt0, T, hd);
    load_rows<Act, HD, kTile>(do_tile, do_base, C, qt0, T, hd);
    __syncthreads();
    const int query = qt0 + lane;
    const bool valid = query < T;
    const float query_lse = valid ? lse[static_cast<int64_t>(pair) * T + query] : 0.0f;
    const float query_dsum = valid ? dsum[static_cast<int64_t>(pair) * T + query] : 0.0f;
    float score[kRowsPerWarp] = {};
    float dp[kRowsPerWarp] = {};
    dot_rows<HD>(score, warp_k, q_tile + lane * kPitch);
    dot_rows<HD>(dp, warp_v, do_tile + lane * kPitch);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float p = valid && key[r] <= query ? expf(score[r] * scale - query_lse) : 0.0f;
      warp_p[lane * kRowsPerWarp + r] = p;
      warp_ds[lane * kRowsPerWarp + r] = p * (dp[r] - query_dsum) * scale;
    }
    __syncwarp();
    accumulate_rows<HD>(dv, warp_p, do_tile, lane);
    accumulate_rows<HD>(dk, warp_ds, q_tile, lane);
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int j = k0 + warp * kRowsPerWarp + r;
    if (j >= T) continue;
    Act* dk_row =
        dqkv + static_cast<int64_t>(b) * T * ld + j * ld + C + static_cast<int64_t>(h) * hd;
    Act* dv_row = dk_row + C;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) {
        dk_row[d] = from_float<Act>(dk[r][c]);
        dv_row[d] = from_float<Act>(dv[r][c]);
      }
    }
  }
}

struct Shape {
  int B, T, C, H, hd;
  float scale;
};

Shape check_shape(int B, int T, int C, int H, const char* function) {
  if (B < 0 || T < 0 || C < 0 || H <= 0 || C % H != 0) {
    throw std::invalid_argument(
        std::string(function) + ": need B, T, C ≥ 0 and H > 0 dividing C (B=" + std::to_string(B) +
        " T=" + std::to_string(T) + " C=" + std::to_string(C) + " H=" + std::to_string(H) + ")");
  }
  const int hd = C / H;
  if (hd > kMaxHeadDim) {
    throw std::invalid_argument(std::string(function) + ": head dim C / H = " + std::to_string(hd) +
                                " exceeds the supported " + std::to_string(kMaxHeadDim));
  }
  const int64_t query_blocks = (static_cast<int64_t>(T) + kBlockRows - 1) / kBlockRows;
  if (query_blocks > 65535) {
    throw std::invalid_argument(std::string(function) + ": T = " + std::to_string(T) +
                                " exceeds the supported " + std::to_string(65535 * kBlockRows));
  }
  return {B, T, C, H, hd, 1.0f / sqrtf(static_cast<float>(hd))};
}

// Launches kernel with `floats` of dynamic shared memory, raising the 48 KiB default limit
// when it needs more (both sm_80 and sm_90 allow over 160 KiB per block).
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, int floats, cudaStream_t stream, Args... args) {
  const int bytes = floats * static_cast<int>(sizeof(float));
  if (bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  }
  kernel<<<grid, kThreads, bytes, stream>>>(args...);
  CUDA_CHECK_LAUNCH();
}

template <typename Act, int HD>
void forward_with(const Context& ctx, Act* out, float* lse, const Act* qkv, const Shape& s) {
  const dim3 grid(s.B * s.H, (s.T + kBlockRows - 1) / kBlockRows);
  launch(attention_forward_kernel<Act, HD>, grid, forward_shared_floats<HD>(), ctx.stream, out, lse,
         qkv, s.T, s.C, s.H, s.hd, s.scale);
}

template <typename Act, int HD>
void backward_with(const Context& ctx, Act* dqkv, const Act* dout, const Act* qkv, const float* lse,
                   const float* dsum, const Shape& s) {
  const dim3 grid(s.B * s.H, (s.T + kBlockRows - 1) / kBlockRows);
  launch(attention_backward_dq_kernel<Act, HD>, grid, backward_dq_shared_floats<HD>(), ctx.stream,
         dqkv, dout, qkv, lse, dsum, s.T, s.C, s.H, s.hd, s.scale);
  launch(attention_backward_dkv_kernel<Act, HD>, grid, backward_dkv_shared_floats<HD>(), ctx.stream,
         dqkv, dout, qkv, lse, dsum, s.T, s.C, s.H, s.hd, s.scale);
}

}  // namespace

size_t attention_scratch_bytes(int B, int T, int C, int H) {
  (void)C;
  return static_cast<size_t>(B) * H * T * sizeof(float);
}

template <typename Act>
void attention_forward(const Context& ctx, Act* out, float* lse, const Act* qkv, int B, int T,
                       int C, int H, void* scratch) {
  (void)scratch;
  const Shape s = check_shape(B, T, C, H, "attention_forward");
  if (B == 0 || T == 0 || C == 0) return;
  if (s.hd <= 16) {
    forward_with<Act, 16>(ctx, out, lse, qkv, s);
  } else if (s.hd <= 32) {
    forward_with<Act, 32>(ctx, out, lse, qkv, s);
  } else if (s.hd <= 64) {
    forward_with<Act, 64>(ctx, out, lse, qkv, s);
  } else {
    forward_with<Act, 128>(ctx, out, lse, qkv, s);
  }
}

template <typename Act>
void attention_backward(const Context& ctx, Act* dqkv, const Act* dout, const Act* qkv,
                        const Act* out, const float* lse, int B, int T, int C, int H,
                        void* scratch) {
  const Shape s = check_shape(B, T, C, H, "attention_backward");
  if (B == 0 || T == 0 || C == 0) return;
  float* dsum = static_cast<float*>(scratch);  // (B, H, T)
  const int64_t warps = static_cast<int64_t>(B) * T * H;
  const int threads = 256;
  const int64_t blocks = (warps * 32 + threads - 1) / threads;
  attention_dsum_kernel<<<static_cast<unsigned>(blocks), threads, 0, ctx.stream>>>(
      dsum, dout, out, B, T, C, H, s.hd);
  CUDA_CHECK_LAUNCH();
  if (s.hd <= 16) {
    backward_with<Act, 16>(ctx, dqkv, dout, qkv, lse, dsum, s);
  } else if (s.hd <= 32) {
    backward_with<Act, 32>(ctx, dqkv, dout, qkv, lse, dsum, s);
  } else if (s.hd <= 64) {
    backward_with<Act, 64>(ctx, dqkv, dout, qkv, lse, dsum, s);
  } else {
    backward_with<Act, 128>(ctx, dqkv, dout, qkv, lse, dsum, s);
  }
}

template void attention_forward<float>(const Context&, float*, float*, const float*, int, int, int,
                                       int, void*);
template void attention_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, float*,
                                               const __nv_bfloat16*, int, int, int, int, void*);
template void attention_backward<float>(const Context&, float*, const float*, const float*,
                                        const float*, const float*, int, int, int, int, void*);
template void attention_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*,
                                                const __nv_bfloat16*, const __nv_bfloat16*,
                                                const __nv_bfloat16*, const float*, int, int, int,
                                                int, void*);

}  // namespace loom::kernels::cuda
