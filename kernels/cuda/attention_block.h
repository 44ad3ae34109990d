// The pieces of ring (sequence-parallel) attention on the GPU: the API and contracts of
// kernels/cpu/attention_block.h plus a Context, for activations of type Act (float or
// __nv_bfloat16) with fp32 arithmetic inside; lse is always float. Shapes and the causal rule
// (query row i sees a prefix of blk.visible(i) key rows): kernels/attention_block.h.
//
// hd must be at most 128 (std::invalid_argument otherwise), as for kernels/cuda/attention.h,
// whose tiling these kernels share: per (b, h, 16 rows) a block of 4 warps streams the other
// side's rows through shared memory in 32-row tiles. Forward keeps an online softmax in fp32.
// Backward recomputes the probabilities from the merged lse in two kernels — one per 16 query
// rows sums dQ over the keys they see, one per 16 key rows sums dK and dV over the queries that
// see them — so every gradient element is summed by one thread in a fixed order and added once
// to its destination: no atomics, bitwise reproducible.
//
//   DeviceMemory scratch = device_alloc(attention_block_scratch_bytes(B, H, q_len));
//   attention_block_forward<__nv_bfloat16>(ctx, block_out, block_lse, q, kv, blk, nullptr);
//   attention_merge<__nv_bfloat16>(ctx, out, lse, block_out, block_lse, blk);  // 0, −∞ at start
//   attention_block_backward<__nv_bfloat16>(ctx, dq, dkv, dout, q, kv, out, lse, blk,
//                                           scratch.get());
#pragma once
#include <cstddef>

#include "kernels/attention_block.h"
#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// Bytes of scratch attention_block_backward needs for blocks over sequences of q_len query rows:
// D = rowsum(dout ∘ out), one float per (b, h, query row). attention_block_forward needs none.
size_t attention_block_scratch_bytes(int B, int H, int q_len);

// The block's rows of out (B, q_len, H·hd) — softmax over the visible keys of q kᵀ / sqrt(hd),
// times v — and of lse (B, H, q_len) float, the log-sum-exp of the visible scaled scores; only
// those rows are written (overwritten). A row that sees no key gets out 0 and lse −∞.
// scratch is unused (may be null); it is there to mirror the CPU signature.
template <typename Act>
void attention_block_forward(const Context& ctx, Act* out, float* lse, const Act* q, const Act* kv,
                             const AttentionBlock& blk, void* scratch);

// Merges a block's partial result into the running one over the block's query rows, in fp32:
// lse' = log(e^lse + e^block_lse), out' = out·e^(lse − lse') + block_out·e^(block_lse − lse').
// A row whose lse is −∞ takes the block's result; a row whose block_lse is −∞ is left as it is.
// out, block_out (B, q_len, H·hd); lse, block_lse (B, H, q_len) float.
template <typename Act>
void attention_merge(const Context& ctx, Act* out, float* lse, const Act* block_out,
                     const float* block_lse, const AttentionBlock& blk);

// The block's share of the attention gradient, from dout (B, q_len, H·hd) and the merged
// forward's out (B, q_len, H·hd) and lse (B, H, q_len) over every block: dq (layout of q) +=
// over the block's query rows, dkv (layout of kv: keys' and values' columns) += over its key
// rows. dq and dkv may be the same packed tensor (disjoint columns). scratch holds
// attention_block_scratch_bytes(B, H, q_len) bytes.
template <typename Act>
void attention_block_backward(const Context& ctx, Act* dq, Act* dkv, const Act* dout, const Act* q,
                              const Act* kv, const Act* out, const float* lse,
                              const AttentionBlock& blk, void* scratch);

// dst (rows, cols), rows dst_ld elements apart = src (rows, cols), rows src_ld apart: a column
// range of a row-major tensor, queued on ctx.stream. The ranges do not overlap; dst_ld and
// src_ld are at least cols (std::invalid_argument otherwise).
template <typename Act>
void copy_rows(const Context& ctx, Act* dst, size_t dst_ld, const Act* src, size_t src_ld,
               size_t rows, size_t cols);

}  // namespace loom::kernels::cuda
