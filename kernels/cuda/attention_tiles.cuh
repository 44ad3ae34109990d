// The tiling both attention kernel families share (kernels/cuda/attention.cu: whole causal
// attention; kernels/cuda/attention_block.cu: ring-attention blocks): the work decomposition,
// shared-memory layout and the warp-level helpers. Internal to kernels/cuda/.
#pragma once
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace loom::kernels::cuda::attention_tiles {

// Work decomposition shared by all three kernels. A block of kWarps warps owns kBlockRows rows of
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

}  // namespace loom::kernels::cuda::attention_tiles
