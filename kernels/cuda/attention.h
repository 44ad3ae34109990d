// Causal multi-head self-attention on the GPU that never stores the (T, T) scores: the API and
// layout of kernels/cpu/attention.h plus a Context, for activations of type Act (float or
// __nv_bfloat16) with fp32 arithmetic inside.
//
// qkv (B, T, C + 2·Ckv) holds per token [q | k | v]: q C = H·hd wide, k and v Ckv = kv_heads·hd
// (grouped-query attention when kv_heads < H), head h at columns h·hd of its part;
// hd = C / H must be at most 128 (std::invalid_argument otherwise). Forward is a
// FlashAttention-style tiled kernel: per (b, h, 16 queries) block, 32-key K/V tiles pass through
// shared memory and an online softmax in fp32 keeps only the running max, sum and output; lse
// (B, H, T) is saved. Backward recomputes the probabilities from lse in two kernels — one block
// per 16 keys accumulates dK and dV over all later queries, one block per 16 queries accumulates
// dQ over all earlier keys — so every gradient element is summed by one thread in a fixed order:
// no atomics, bitwise reproducible. Scalar fp32 FMAs (no tensor cores); cuDNN's fused SDPA is the
// fast path to come.
//
//   DeviceMemory scratch = device_alloc(attention_scratch_bytes(B, T, C, H));
//   attention_forward<__nv_bfloat16>(ctx, out, lse, qkv, B, T, C, H, H, scratch.get());
//   attention_backward<__nv_bfloat16>(ctx, dqkv, dout, qkv, out, lse, B, T, C, H, H,
//   scratch.get());
#pragma once
#include <cstddef>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// Bytes of scratch attention_backward needs: D = rowsum(dout ∘ out), one float per (b, h, t).
// attention_forward needs none.
size_t attention_scratch_bytes(int B, int T, int C, int H);

// out (B, T, C): softmax(q kᵀ / sqrt(hd) + causal mask) v per head; lse (B, H, T) float saved.
// Both overwritten. scratch is unused (may be null); it is there to mirror the CPU signature.
// Act is the activation type (float or __nv_bfloat16); T is the sequence length, as everywhere.
template <typename Act>
void attention_forward(const Context& ctx, Act* out, float* lse, const Act* qkv, int B, int T,
                       int C, int H, int kv_heads, void* scratch);

// dqkv (B, T, C + 2·Ckv) — overwritten — from dout (B, T, C), given the forward's qkv, out and
// lse. scratch holds attention_scratch_bytes(B, T, C, H) bytes.
template <typename Act>
void attention_backward(const Context& ctx, Act* dqkv, const Act* dout, const Act* qkv,
                        const Act* out, const float* lse, int B, int T, int C, int H, int kv_heads,
                        void* scratch);

}  // namespace loom::kernels::cuda
