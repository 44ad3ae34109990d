// Rotary position embedding on the GPU (GPT-NeoX "rotate half" form) on the q and k parts of
// qkv; the API of kernels/cpu/rope.h plus a Context. All pointers are device pointers; every call
// is queued on ctx.stream.
//
// For head dim hd and d < hd/2, with angle θ = t · theta^(−2d/hd):
//   x'[d]        = x[d] cos θ − x[d + hd/2] sin θ
//   x'[d + hd/2] = x[d + hd/2] cos θ + x[d] sin θ
//
//   rope_table(ctx, cos, sin, T, C / H, 10000.0f);                  // once
//   rope_apply<__nv_bfloat16>(ctx, qkv, cos, sin, B, T, C, H, H, false);   // forward
//   rope_apply<__nv_bfloat16>(ctx, dqkv, cos, sin, B, T, C, H, H, true);   // backward
//
// The activation type is called Act (float or __nv_bfloat16) because T is the sequence length.
// The tables are float; the rotation is computed in fp32 and rounded once to Act.
#pragma once
#include <cuda_bf16.h>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// cos, sin (T, hd/2) float for positions 0..T−1 — overwritten; computed in double on the
// device and rounded to float, as the CPU kernel. hd is even.
void rope_table(const Context& ctx, float* cos, float* sin, int T, int hd, float theta,
                int first_position = 0);

// Rotates q (H heads) and k (kv_heads) of qkv (B, T, C + 2·Ckv) in place; v is untouched. cos
// and sin come from rope_table
// with at least T rows and hd = C / H. inverse = true applies the transposed rotation (−θ),
// which is the backward of the forward rotation.
template <typename Act>
void rope_apply(const Context& ctx, Act* qkv, const float* cos, const float* sin, int B, int T,
                int C, int H, int kv_heads, bool inverse);

}  // namespace loom::kernels::cuda
