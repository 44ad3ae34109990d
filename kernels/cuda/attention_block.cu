#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention_block.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace loom::kernels::cuda {
namespace {

// Work decomposition shared by the kernels. A block of kWarps warps owns kBlockRows rows of
// one (b, h) pair — queries in forward and dQ, keys in dK/dV — kRowsPerWarp per warp, held in
// shared memory with their fp32 accumulators in registers (lane l keeps head dims l, l + 32, …).
// The other side streams through shared memory in tiles of kTile = 32 rows, one per lane: lane l
// computes the scores of tile row l against the warp's kRowsPerWarp rows, the warp shares them
// through shared memory and every lane folds all 32 into its head dims. Each gradient element is
// thus summed by one thread in a fixed order.
constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;  // the float4 score exchange below depends on this being 4
constexpr int kBlockRows = kWarps * kRowsPerWarp;
constexpr int kTile = 32;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxHeadDim = 128;
static_assert(kRowsPerWarp == 4, "scores are exchanged as one float4 per tile row");

// Shared rows are padded by 4 floats: 16-byte aligned for float4 reads, and a warp reading 32
// different rows as float4 (8 lanes per phase) touches 32 different banks.
template <int HD>
constexpr int pitch() {
  return HD + 4;
}

// tile (kRows, pitch) ← rows t0 … t0 + kRows − 1 of one head: base points at row 0's first head
// column, rows are ld elements apart. Rows from `rows` on and columns past hd are zero, so
// padded dot products add nothing.
template <typename Act, int HD, int kRows>
__device__ void load_rows(float* tile, const Act* base, int64_t ld, int t0, int rows, int hd) {
  for (int idx = threadIdx.x; idx < kRows * HD; idx += blockDim.x) {
    const int r = idx / HD;
    const int d = idx % HD;
    const int t = t0 + r;
    float value = 0.0f;
    if (t < rows && d < hd) value = to_float(base[static_cast<int64_t>(t) * ld + d]);
    tile[r * pitch<HD>() + d] = value;
  }
}

// out[r] += rows[r] · other for the warp's kRowsPerWarp shared rows against one other row.
template <int HD>
__device__ __forceinline__ void dot_rows(float (&out)[kRowsPerWarp], const float* rows,
                                         const float* other) {
  for (int d = 0; d < HD; d += 4) {
    const float4 o = *reinterpret_cast<const float4*>(other + d);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float4 x = *reinterpret_cast<const float4*>(rows + r * pitch<HD>() + d);
      out[r] = fmaf(x.x, o.x, out[r]);
      out[r] = fmaf(x.y, o.y, out[r]);
      out[r] = fmaf(x.z, o.z, out[r]);
      out[r] = fmaf(x.w, o.w, out[r]);
    }
  }
}

// acc[r][c] += Σ_j weights[j][r] · tile[j][lane + 32c] over the kTile rows j of tile, in order.
// weights is the warp's (kTile, kRowsPerWarp) exchange buffer.
template <int HD>
__device__ __forceinline__ void accumulate_rows(float (&acc)[kRowsPerWarp][(HD + 31) / 32],
                                                const float* weights, const float* tile, int lane) {
  constexpr int kDims = (HD + 31) / 32;
  for (int j = 0; j < kTile; j++) {
    const float4 w = *reinterpret_cast<const float4*>(weights + j * kRowsPerWarp);
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (HD % 32 != 0 && d >= HD) continue;  // HD = 16: lanes 16–31 own no dimension
      const float x = tile[j * pitch<HD>() + d];
      acc[0][c] = fmaf(w.x, x, acc[0][c]);
      acc[1][c] = fmaf(w.y, x, acc[1][c]);
      acc[2][c] = fmaf(w.z, x, acc[2][c]);
      acc[3][c] = fmaf(w.w, x, acc[3][c]);
    }
  }
}

// Floats of dynamic shared memory per kernel.
template <int HD>
constexpr int forward_shared_floats() {
  return (kBlockRows + 2 * kTile) * pitch<HD>() + kWarps * kTile * kRowsPerWarp;
}
template <int HD>
constexpr int backward_dq_shared_floats() {
  return (2 * kBlockRows + 2 * kTile) * pitch<HD>() + kWarps * kTile * kRowsPerWarp;
}
template <int HD>
constexpr int backward_dkv_shared_floats() {
  return (2 * kBlockRows + 2 * kTile) * pitch<HD>() + 2 * kWarps * kTile * kRowsPerWarp;
}

constexpr int kMaxGridY = 65535;

// The first query row (0-based within the block) that sees key row j < kv_rows, q_rows or more
// when none does: visible(i) > j ⇔ q_position + i − kv_position ≥ j, and visible grows with i.
__device__ __forceinline__ int first_query_seeing(const AttentionBlock& blk, int j) {
  if (!blk.causal) return 0;
  const int i = j + blk.kv_position - blk.q_position;
  return i < 0 ? 0 : i;
}

// One (b, h) pair's offsets into the block's tensors, as in kernels/cpu/attention_block.cpp:
// q[row q_begin], k[row kv_begin], out[row q_begin] (also dout's), lse[row q_begin].
struct BlockHead {
  int64_t q, kv, out, lse;
};

__device__ __forceinline__ BlockHead block_head(const AttentionBlock& blk, int pair) {
  const int64_t b = pair / blk.H, h = pair % blk.H, hd = blk.hd, C = blk.H * hd;
  const int64_t g = blk.kv_head(static_cast<int>(h));
  return {(b * blk.q_len + blk.q_begin) * blk.q_ld + h * hd,
          (b * blk.kv_len + blk.kv_begin) * blk.kv_ld + g * hd,
          (b * blk.q_len + blk.q_begin) * C + h * hd,
          static_cast<int64_t>(pair) * blk.q_len + blk.q_begin};
}

// Grid: x = b·H + h, y = block of kBlockRows query rows, reversed so that in a causal block the
// rows that see the most keys start first.
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    block_forward_kernel(Act* out, float* lse, const Act* q_all, const Act* kv_all,
                         AttentionBlock blk, float scale) {
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
  const int hd = blk.hd;
  const int C = blk.H * hd;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockRows;
  const BlockHead head = block_head(blk, pair);
  const Act* k_base = kv_all + head.kv;
  const Act* v_base = k_base + blk.v_offset;
  float* warp_exchange = exchange + warp * kTile * kRowsPerWarp;
  const float* warp_rows = q_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(q_tile, q_all + head.q, blk.q_ld, q0, blk.q_rows, hd);
  // Rows past q_rows compute a copy of the last row (keeping every lane in the shuffles) and are
  // never written.
  int visible[kRowsPerWarp];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    visible[r] = blk.visible(min(q0 + warp * kRowsPerWarp + r, blk.q_rows - 1));
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDims; c++) acc[r][c] = 0.0f;
  }

  // visible grows with the row: the block's last row sees the most keys.
  const int key_end = blk.visible(min(q0 + kBlockRows, blk.q_rows) - 1);
  for (int kv0 = 0; kv0 < key_end; kv0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and q_tile written, the first time)
    load_rows<Act, HD, kTile>(k_tile, k_base, blk.kv_ld, kv0, blk.kv_rows, hd);
    load_rows<Act, HD, kTile>(v_tile, v_base, blk.kv_ld, kv0, blk.kv_rows, hd);
    __syncthreads();
    float score[kRowsPerWarp] = {};
    dot_rows<HD>(score, warp_rows, k_tile + lane * kPitch);
    const int key = kv0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      const float s = key < visible[r] ? score[r] * scale : -INFINITY;
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
    if (i >= blk.q_rows) continue;
    // A row that saw a key has row_sum ≥ 1 (its largest score contributes e^0); one that saw
    // none has 0 and gets out 0, lse −∞.
    const bool seen = row_sum[r] > 0.0f;
    const float inv_sum = seen ? 1.0f / row_sum[r] : 0.0f;
    Act* out_row = out + head.out + static_cast<int64_t>(i) * C;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) out_row[d] = from_float<Act>(acc[r][c] * inv_sum);
    }
    if (lane == 0) lse[head.lse + i] = seen ? row_max[r] + logf(row_sum[r]) : -INFINITY;
  }
}

// One warp per (b, h, query row) of the block; rows = B·H·q_rows, pair-major.
template <typename Act>
__global__ void merge_kernel(Act* out, float* lse, const Act* block_out, const float* block_lse,
                             AttentionBlock blk) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(blk.B) * blk.H * blk.q_rows) return;  // whole warps leave
  const int pair = static_cast<int>(row / blk.q_rows);
  const int i = static_cast<int>(row % blk.q_rows);
  const BlockHead head = block_head(blk, pair);
  const int64_t at = head.lse + i;
  const int64_t o_at = head.out + static_cast<int64_t>(i) * blk.H * blk.hd;
  const float l1 = lse[at], l2 = block_lse[at];
  if (l2 == -INFINITY) return;  // the block added nothing to this row (the whole warp leaves)
  float w1 = 0.0f, w2 = 1.0f, merged = l2;  // a row with nothing yet takes the block's result
  if (l1 != -INFINITY) {
    const float hi = fmaxf(l1, l2);
    merged = hi + logf(expf(l1 - hi) + expf(l2 - hi));
    w1 = expf(l1 - merged);
    w2 = expf(l2 - merged);
  }
  for (int d = lane; d < blk.hd; d += 32) {
    const float o = l1 == -INFINITY ? 0.0f : to_float(out[o_at + d]);
    out[o_at + d] = from_float<Act>(w1 * o + w2 * to_float(block_out[o_at + d]));
  }
  __syncwarp();  // every lane has read lse[at] before lane 0 replaces it
  if (lane == 0) lse[at] = merged;
}

// dsum (B, H, q_len) at the block's rows = Σ_d dout ∘ out over each head's hd columns: the
// Σ_j P_ij dP_ij over every block's keys, from the merged output. One warp per (b, h, row).
template <typename Act>
__global__ void block_dsum_kernel(float* dsum, const Act* dout, const Act* out,
                                  AttentionBlock blk) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(blk.B) * blk.H * blk.q_rows) return;  // whole warps leave
  const int pair = static_cast<int>(row / blk.q_rows);
  const int i = static_cast<int>(row % blk.q_rows);
  const BlockHead head = block_head(blk, pair);
  const int64_t offset = head.out + static_cast<int64_t>(i) * blk.H * blk.hd;
  float sum = 0.0f;
  for (int d = lane; d < blk.hd; d += 32) {
    sum += to_float(dout[offset + d]) * to_float(out[offset + d]);
  }
  sum = warp_sum(sum);
  if (lane == 0) dsum[head.lse + i] = sum;
}

// dQ += for kBlockRows query rows: Σ over the visible keys j of dS_ij k_j, with
// P_ij = exp(s_ij − lse_i) (the merged lse, so P is this block's part of the global softmax)
// and dS_ij = P_ij (dO_i · v_j − dsum_i) · scale. Grid as in forward.
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    block_backward_dq_kernel(Act* dq_all, const Act* dout, const Act* q_all, const Act* kv_all,
                             const float* lse, const float* dsum, AttentionBlock blk, float scale) {
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
  const int hd = blk.hd;
  const int C = blk.H * hd;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kBlockRows;
  const BlockHead head = block_head(blk, pair);
  const Act* k_base = kv_all + head.kv;
  const Act* v_base = k_base + blk.v_offset;
  float* warp_exchange = exchange + warp * kTile * kRowsPerWarp;
  const float* warp_q = q_tile + warp * kRowsPerWarp * kPitch;
  const float* warp_do = do_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(q_tile, q_all + head.q, blk.q_ld, q0, blk.q_rows, hd);
  load_rows<Act, HD, kBlockRows>(do_tile, dout + head.out, C, q0, blk.q_rows, hd);
  int visible[kRowsPerWarp];
  float row_lse[kRowsPerWarp], row_dsum[kRowsPerWarp], acc[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int query = min(q0 + warp * kRowsPerWarp + r, blk.q_rows - 1);
    visible[r] = blk.visible(query);
    row_lse[r] = lse[head.lse + query];
    row_dsum[r] = dsum[head.lse + query];
#pragma unroll
    for (int c = 0; c < kDims; c++) acc[r][c] = 0.0f;
  }

  const int key_end = blk.visible(min(q0 + kBlockRows, blk.q_rows) - 1);
  for (int kv0 = 0; kv0 < key_end; kv0 += kTile) {
    __syncthreads();
    load_rows<Act, HD, kTile>(k_tile, k_base, blk.kv_ld, kv0, blk.kv_rows, hd);
    load_rows<Act, HD, kTile>(v_tile, v_base, blk.kv_ld, kv0, blk.kv_rows, hd);
    __syncthreads();
    float score[kRowsPerWarp] = {};
    float dp[kRowsPerWarp] = {};
    dot_rows<HD>(score, warp_q, k_tile + lane * kPitch);
    dot_rows<HD>(dp, warp_do, v_tile + lane * kPitch);
    const int key = kv0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; r++) {
      // Masked keys never reach expf: a row that sees nothing may have lse −∞.
      const float p = key < visible[r] ? expf(score[r] * scale - row_lse[r]) : 0.0f;
      warp_exchange[lane * kRowsPerWarp + r] = p * (dp[r] - row_dsum[r]) * scale;
    }
    __syncwarp();
    accumulate_rows<HD>(acc, warp_exchange, k_tile, lane);
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int i = q0 + warp * kRowsPerWarp + r;
    if (i >= blk.q_rows) continue;
    Act* dq_row = dq_all + head.q + static_cast<int64_t>(i) * blk.q_ld;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) dq_row[d] = from_float<Act>(to_float(dq_row[d]) + acc[r][c]);
    }
  }
}

// dK, dV += for kBlockRows key rows j: Σ over the query heads sharing the key/value head and the
// query rows i that see j of dS_ij q_i and P_ij dO_i. Grid: x = b·kv_heads + g, y = block of key
// rows (the first blocks see the most queries); the group's query heads run in turn, so each
// dK/dV element still has one writer.
template <typename Act, int HD>
__global__ void __launch_bounds__(kThreads)
    block_backward_dkv_kernel(Act* dkv_all, const Act* dout, const Act* q_all, const Act* kv_all,
                              const float* lse, const float* dsum, AttentionBlock blk,
                              float scale) {
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
  const int kv_heads = blk.kv_head_count(), group = blk.H / kv_heads;
  const int first_pair = (blockIdx.x / kv_heads) * blk.H + (blockIdx.x % kv_heads) * group;
  const int hd = blk.hd;
  const int C = blk.H * hd;
  const int k0 = blockIdx.y * kBlockRows;
  const BlockHead head = block_head(blk, first_pair);  // the kv offsets are the group's
  float* warp_p = p_exchange + warp * kTile * kRowsPerWarp;
  float* warp_ds = ds_exchange + warp * kTile * kRowsPerWarp;
  const float* warp_k = k_tile + warp * kRowsPerWarp * kPitch;
  const float* warp_v = v_tile + warp * kRowsPerWarp * kPitch;

  load_rows<Act, HD, kBlockRows>(k_tile, kv_all + head.kv, blk.kv_ld, k0, blk.kv_rows, hd);
  load_rows<Act, HD, kBlockRows>(v_tile, kv_all + head.kv + blk.v_offset, blk.kv_ld, k0,
                                 blk.kv_rows, hd);
  int key[kRowsPerWarp];
  float dk[kRowsPerWarp][kDims], dv[kRowsPerWarp][kDims];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    key[r] = min(k0 + warp * kRowsPerWarp + r, blk.kv_rows - 1);
#pragma unroll
    for (int c = 0; c < kDims; c++) dk[r][c] = dv[r][c] = 0.0f;
  }

  for (int member = 0; member < group; member++) {
    const BlockHead qh = block_head(blk, first_pair + member);
    const Act* q_base = q_all + qh.q;
    const Act* do_base = dout + qh.out;
    // Query rows before the first that sees key k0 see none of this block's keys.
    for (int qt0 = first_query_seeing(blk, k0); qt0 < blk.q_rows; qt0 += kTile) {
      __syncthreads();
      load_rows<Act, HD, kTile>(q_tile, q_base, blk.q_ld, qt0, blk.q_rows, hd);
      load_rows<Act, HD, kTile>(do_tile, do_base, C, qt0, blk.q_rows, hd);
      __syncthreads();
      const int query = qt0 + lane;
      const bool valid = query < blk.q_rows;
      const int query_visible = valid ? blk.visible(query) : 0;
      const float query_lse = valid ? lse[qh.lse + query] : 0.0f;
      const float query_dsum = valid ? dsum[qh.lse + query] : 0.0f;
      float score[kRowsPerWarp] = {};
      float dp[kRowsPerWarp] = {};
      dot_rows<HD>(score, warp_k, q_tile + lane * kPitch);
      dot_rows<HD>(dp, warp_v, do_tile + lane * kPitch);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; r++) {
        const float p = key[r] < query_visible ? expf(score[r] * scale - query_lse) : 0.0f;
        warp_p[lane * kRowsPerWarp + r] = p;
        warp_ds[lane * kRowsPerWarp + r] = p * (dp[r] - query_dsum) * scale;
      }
      __syncwarp();
      accumulate_rows<HD>(dv, warp_p, do_tile, lane);
      accumulate_rows<HD>(dk, warp_ds, q_tile, lane);
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; r++) {
    const int j = k0 + warp * kRowsPerWarp + r;
    if (j >= blk.kv_rows) continue;
    Act* dk_row = dkv_all + head.kv + static_cast<int64_t>(j) * blk.kv_ld;
    Act* dv_row = dk_row + blk.v_offset;
#pragma unroll
    for (int c = 0; c < kDims; c++) {
      const int d = lane + 32 * c;
      if (d < hd) {
        dk_row[d] = from_float<Act>(to_float(dk_row[d]) + dk[r][c]);
        dv_row[d] = from_float<Act>(to_float(dv_row[d]) + dv[r][c]);
      }
    }
  }
}

std::string describe(const AttentionBlock& blk) {
  return "B=" + std::to_string(blk.B) + " H=" + std::to_string(blk.H) +
         " hd=" + std::to_string(blk.hd) + " q_len=" + std::to_string(blk.q_len) +
         " q_begin=" + std::to_string(blk.q_begin) + " q_rows=" + std::to_string(blk.q_rows) +
         " q_ld=" + std::to_string(blk.q_ld) + " kv_len=" + std::to_string(blk.kv_len) +
         " kv_begin=" + std::to_string(blk.kv_begin) + " kv_rows=" + std::to_string(blk.kv_rows) +
         " kv_ld=" + std::to_string(blk.kv_ld) + " v_offset=" + std::to_string(blk.v_offset) +
         " kv_heads=" + std::to_string(blk.kv_heads);
}

// Rejects shapes the kernels cannot index: negative sizes, row ranges outside their sequences,
// rows narrower than the heads, and head dims past the tiling's limit.
void check_block(const AttentionBlock& blk, const char* function) {
  const bool heads_ok = blk.kv_heads >= 0 && (blk.kv_heads == 0 || blk.H % blk.kv_heads == 0);
  const bool sizes_ok = heads_ok && blk.B >= 0 && blk.H > 0 && blk.hd > 0 && blk.q_begin >= 0 &&
                        blk.q_rows >= 0 && blk.q_begin + blk.q_rows <= blk.q_len &&
                        blk.kv_begin >= 0 && blk.kv_rows >= 0 &&
                        blk.kv_begin + blk.kv_rows <= blk.kv_len;
  const int64_t C = static_cast<int64_t>(blk.H) * blk.hd;
  const int64_t Ckv = static_cast<int64_t>(blk.kv_head_count()) * blk.hd;
  const bool rows_ok = blk.q_ld >= C && blk.v_offset >= 0 && blk.kv_ld >= blk.v_offset + Ckv;
  if (!sizes_ok || !rows_ok) {
    throw std::invalid_argument(std::string(function) +
                                ": need B ≥ 0, H, hd > 0, row ranges inside their sequences and "
                                "kv_heads dividing H, rows wide enough for the heads (" +
                                describe(blk) + ")");
  }
  if (blk.hd > kMaxHeadDim) {
    throw std::invalid_argument(std::string(function) +
                                ": head dim hd = " + std::to_string(blk.hd) +
                                " exceeds the supported " + std::to_string(kMaxHeadDim));
  }
  const int64_t row_blocks =
      (static_cast<int64_t>(std::max(blk.q_rows, blk.kv_rows)) + kBlockRows - 1) / kBlockRows;
  if (row_blocks > kMaxGridY) {
    throw std::invalid_argument(std::string(function) + ": q_rows and kv_rows must be at most " +
                                std::to_string(kMaxGridY * kBlockRows) + " (" + describe(blk) +
                                ")");
  }
}

float softmax_scale(const AttentionBlock& blk) { return 1.0f / sqrtf(static_cast<float>(blk.hd)); }

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

// Blocks of `threads` threads for one warp per (b, h, query row) of the block.
unsigned row_warp_blocks(const AttentionBlock& blk, int threads) {
  const int64_t warps = static_cast<int64_t>(blk.B) * blk.H * blk.q_rows;
  return static_cast<unsigned>((warps * 32 + threads - 1) / threads);
}

template <typename Act, int HD>
void forward_with(const Context& ctx, Act* out, float* lse, const Act* q, const Act* kv,
                  const AttentionBlock& blk) {
  const dim3 grid(blk.B * blk.H, (blk.q_rows + kBlockRows - 1) / kBlockRows);
  launch(block_forward_kernel<Act, HD>, grid, forward_shared_floats<HD>(), ctx.stream, out, lse, q,
         kv, blk, softmax_scale(blk));
}

template <typename Act, int HD>
void backward_with(const Context& ctx, Act* dq, Act* dkv, const Act* dout, const Act* q,
                   const Act* kv, const float* lse, const float* dsum, const AttentionBlock& blk) {
  const float scale = softmax_scale(blk);
  const dim3 dq_grid(blk.B * blk.H, (blk.q_rows + kBlockRows - 1) / kBlockRows);
  launch(block_backward_dq_kernel<Act, HD>, dq_grid, backward_dq_shared_floats<HD>(), ctx.stream,
         dq, dout, q, kv, lse, dsum, blk, scale);
  const dim3 dkv_grid(blk.B * blk.kv_head_count(), (blk.kv_rows + kBlockRows - 1) / kBlockRows);
  launch(block_backward_dkv_kernel<Act, HD>, dkv_grid, backward_dkv_shared_floats<HD>(), ctx.stream,
         dkv, dout, q, kv, lse, dsum, blk, scale);
}

}  // namespace

size_t attention_block_scratch_bytes(int B, int H, int q_len) {
  return static_cast<size_t>(B) * H * q_len * sizeof(float);
}

template <typename Act>
void attention_block_forward(const Context& ctx, Act* out, float* lse, const Act* q, const Act* kv,
                             const AttentionBlock& blk, void* scratch) {
  (void)scratch;
  check_block(blk, "attention_block_forward");
  // kv_rows = 0 still writes the rows: every one sees no key.
  if (blk.B == 0 || blk.q_rows == 0) return;
  if (blk.hd <= 16) {
    forward_with<Act, 16>(ctx, out, lse, q, kv, blk);
  } else if (blk.hd <= 32) {
    forward_with<Act, 32>(ctx, out, lse, q, kv, blk);
  } else if (blk.hd <= 64) {
    forward_with<Act, 64>(ctx, out, lse, q, kv, blk);
  } else {
    forward_with<Act, 128>(ctx, out, lse, q, kv, blk);
  }
}

template <typename Act>
void attention_merge(const Context& ctx, Act* out, float* lse, const Act* block_out,
                     const float* block_lse, const AttentionBlock& blk) {
  check_block(blk, "attention_merge");
  if (blk.B == 0 || blk.q_rows == 0) return;
  const int threads = 256;
  merge_kernel<<<row_warp_blocks(blk, threads), threads, 0, ctx.stream>>>(out, lse, block_out,
                                                                          block_lse, blk);
  CUDA_CHECK_LAUNCH();
}

template <typename Act>
void attention_block_backward(const Context& ctx, Act* dq, Act* dkv, const Act* dout, const Act* q,
                              const Act* kv, const Act* out, const float* lse,
                              const AttentionBlock& blk, void* scratch) {
  check_block(blk, "attention_block_backward");
  if (blk.B == 0 || blk.q_rows == 0 || blk.kv_rows == 0) return;  // nothing to add
  float* dsum = static_cast<float*>(scratch);                     // (B, H, q_len): the block's rows
  const int threads = 256;
  block_dsum_kernel<<<row_warp_blocks(blk, threads), threads, 0, ctx.stream>>>(dsum, dout, out,
                                                                               blk);
  CUDA_CHECK_LAUNCH();
  if (blk.hd <= 16) {
    backward_with<Act, 16>(ctx, dq, dkv, dout, q, kv, lse, dsum, blk);
  } else if (blk.hd <= 32) {
    backward_with<Act, 32>(ctx, dq, dkv, dout, q, kv, lse, dsum, blk);
  } else if (blk.hd <= 64) {
    backward_with<Act, 64>(ctx, dq, dkv, dout, q, kv, lse, dsum, blk);
  } else {
    backward_with<Act, 128>(ctx, dq, dkv, dout, q, kv, lse, dsum, blk);
  }
}

template <typename Act>
void copy_rows(const Context& ctx, Act* dst, size_t dst_ld, const Act* src, size_t src_ld,
               size_t rows, size_t cols) {
  if (dst_ld < cols || src_ld < cols) {
    throw std::invalid_argument(
        "copy_rows: need dst_ld, src_ld ≥ cols (dst_ld=" + std::to_string(dst_ld) +
        " src_ld=" + std::to_string(src_ld) + " cols=" + std::to_string(cols) + ")");
  }
  if (rows == 0 || cols == 0) return;
  CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_ld * sizeof(Act), src, src_ld * sizeof(Act),
                               cols * sizeof(Act), rows, cudaMemcpyDeviceToDevice, ctx.stream));
}

template void attention_block_forward<float>(const Context&, float*, float*, const float*,
                                             const float*, const AttentionBlock&, void*);
template void attention_block_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, float*,
                                                     const __nv_bfloat16*, const __nv_bfloat16*,
                                                     const AttentionBlock&, void*);
template void attention_merge<float>(const Context&, float*, float*, const float*, const float*,
                                     const AttentionBlock&);
template void attention_merge<__nv_bfloat16>(const Context&, __nv_bfloat16*, float*,
                                             const __nv_bfloat16*, const float*,
                                             const AttentionBlock&);
template void attention_block_backward<float>(const Context&, float*, float*, const float*,
                                              const float*, const float*, const float*,
                                              const float*, const AttentionBlock&, void*);
template void attention_block_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*,
                                                      __nv_bfloat16*, const __nv_bfloat16*,
                                                      const __nv_bfloat16*, const __nv_bfloat16*,
                                                      const __nv_bfloat16*, const float*,
                                                      const AttentionBlock&, void*);
template void copy_rows<float>(const Context&, float*, size_t, const float*, size_t, size_t,
                               size_t);
template void copy_rows<__nv_bfloat16>(const Context&, __nv_bfloat16*, size_t, const __nv_bfloat16*,
                                       size_t, size_t, size_t);

}  // namespace loom::kernels::cuda
