// Token (+ learned position) embedding on the GPU; the API of kernels/cpu/embedding.h plus a
// Context (and a scratch buffer for the deterministic backward). All pointers are device
// pointers; every call is queued on ctx.stream (no allocation, no synchronisation).
//
//   DeviceMemory scratch = device_alloc(embedding_backward_scratch_bytes(B, T, C));
//   embedding_forward<__nv_bfloat16>(ctx, x, tokens, wte_bf16, wpe_bf16, B, T, C, 0, V);
//   embedding_backward<__nv_bfloat16>(ctx, dwte, dwpe, dx, tokens, B, T, C, 0, V, scratch.get());
//
// The activation type is called Act here (float or __nv_bfloat16) because T is the sequence
// length. Weights read by the forward are Act (the working copy); gradients are fp32.
#pragma once
#include <cuda_bf16.h>

#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// wte holds the vocabulary rows [vocab_begin, vocab_begin + vocab_rows) (all of it: 0, V; a
// tensor-parallel rank: its slice); tokens outside look up zeros and get no gradient.

// out (B, T, C) = wte[tokens[b, t] − vocab_begin] (0 outside the range) + wpe[t] — overwritten;
// the sum is formed in fp32. tokens (B, T) int; wte (vocab_rows, C); wpe (T, C) or null (rotary).
template <typename Act>
void embedding_forward(const Context& ctx, Act* out, const int* tokens, const Act* wte,
                       const Act* wpe, int B, int T, int C, int vocab_begin, int vocab_rows);

// Bytes of device scratch embedding_backward needs for these shapes (asks CUB for its sort's
// temporary storage, so it needs the device that will run the backward to be current).
size_t embedding_backward_scratch_bytes(int B, int T, int C);

// dwte (vocab_rows, C) float += scatter of dout (B, T, C) rows by token (tokens in range only).
// dwpe (T, C) float += Σ_b dout[b] (skipped when null).
// scratch: embedding_backward_scratch_bytes(B, T, C) bytes of device memory (256-byte aligned,
// as device_alloc returns); its contents on entry do not matter.
//
// Deterministic without atomics: the (token, position) pairs are sorted by token with a stable
// radix sort, so each token's rows appear in position order; the sorted list is cut into fixed
// chunks of 32 rows; a token whose rows lie inside one chunk is summed in order and added to dwte
// by that chunk alone, and a token whose run crosses chunks has its per-chunk partial sums
// combined, in chunk order, by the chunk where the run starts. The rounding therefore depends
// only on the tokens, never on timing (it differs from the CPU's strictly sequential order
// within fp32 rounding).
template <typename Act>
void embedding_backward(const Context& ctx, float* dwte, float* dwpe, const Act* dout,
                        const int* tokens, int B, int T, int C, int vocab_begin, int vocab_rows,
                        void* scratch);

}  // namespace loom::kernels::cuda
