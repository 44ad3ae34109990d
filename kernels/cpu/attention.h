// Causal multi-head self-attention that never stores the (T, T) probabilities.
//
// qkv (B, T, C + 2·Ckv) holds per token [q | k | v]: q is C = H·hd wide, k and v Ckv =
// kv_heads·hd each (grouped-query attention when kv_heads < H; kernels/attention_block.h), head h
// at columns h·hd of its part.
// Forward keeps only the log-sum-exp of each score row, lse (B, H, T); backward recomputes the
// probabilities from it (as FlashAttention does), so saved memory is linear in T. Work is split
// over (b, h) pairs across OpenMP threads; each thread uses its own slice of `scratch` and calls
// single-threaded sgemm on row blocks that stop at the causal diagonal. The whole sequence is run
// as one block of ring attention (kernels/cpu/attention_block.h, causal from position 0).
//
//   std::vector<float> scratch(attention_scratch_floats(T, thread_count()));
//   attention_forward(out, lse, qkv, B, T, C, H, H, scratch.data());
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// Floats of scratch memory attention_forward/backward need for sequence length T and `threads`
// OpenMP threads. Pass thread_count(): the kernels run a team of exactly that many threads, and
// thread i uses the i-th slice. Results do not depend on the thread count (each (b, h) pair is
// computed whole by one thread).
size_t attention_scratch_floats(int T, int threads);

// out (B, T, C): softmax(q kᵀ / sqrt(hd) + causal mask) v per head, hd = C / H (H divides C,
// kv_heads divides H); lse (B, H, T) saved. Both overwritten.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int H,
                       int kv_heads, float* scratch);

// dqkv (B, T, C + 2·Ckv) — overwritten — from dout (B, T, C), given the forward's qkv, out and
// lse.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int H, int kv_heads, float* scratch);

}  // namespace loom::kernels::cpu
