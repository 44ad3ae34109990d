// The pieces ring (sequence-parallel) attention is built from, on the CPU: attention of a query
// block over one key/value block with its log-sum-exp, the merge of such partial results, and
// the block's backward from the *global* output and log-sum-exp (so summing the blocks'
// gradients gives the exact gradient of the whole attention). Shapes: kernels/attention_block.h.
// Like kernels/cpu/attention.h, work is split over (b, h) pairs across OpenMP threads, each
// pair computed whole by one thread (results do not depend on the thread count).
//
//   std::vector<float> scratch(attention_block_scratch_floats(blk.kv_rows, thread_count()));
//   attention_block_forward(block_out, block_lse, q, kv, blk, scratch.data());
//   attention_merge(out, lse, block_out, block_lse, blk);   // out, lse start as 0, −∞
//   attention_block_backward(dq, dkv, dout, q, kv, out, lse, blk, scratch.data());
#pragma once
#include <cstddef>

#include "kernels/attention_block.h"

namespace loom::kernels::cpu {

// Floats of scratch the block kernels need for blocks of up to kv_rows key rows.
size_t attention_block_scratch_floats(int kv_rows, int threads);

// The block's rows of out (softmax over the visible keys of q kᵀ / sqrt(hd), times v) and of
// lse (the log-sum-exp of the visible scaled scores) — overwritten. A row that sees no key gets
// out 0 and lse −∞.
void attention_block_forward(float* out, float* lse, const float* q, const float* kv,
                             const AttentionBlock& blk, float* scratch);

// Merges a block's partial result into the running one over the block's query rows, in fp32:
// lse' = log(e^lse + e^block_lse), out' = out·e^(lse − lse') + block_out·e^(block_lse − lse').
// A row whose lse is −∞ (nothing seen yet) takes the block's result.
void attention_merge(float* out, float* lse, const float* block_out, const float* block_lse,
                     const AttentionBlock& blk);

// The block's share of the attention gradient, from dout (B, q_len, H·hd) and the merged
// forward's out and lse (over every block): dq (layout of q) += over the block's query rows,
// dkv (layout of kv: keys' and values' columns) += over its key rows.
void attention_block_backward(float* dq, float* dkv, const float* dout, const float* q,
                              const float* kv, const float* out, const float* lse,
                              const AttentionBlock& blk, float* scratch);

}  // namespace loom::kernels::cpu
