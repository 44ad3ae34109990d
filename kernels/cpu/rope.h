// Rotary position embedding (GPT-NeoX "rotate half" form) on the q and k parts of qkv.
//
// For head dim hd and d < hd/2, with angle θ = t · theta^(−2d/hd):
//   x'[d]        = x[d] cos θ − x[d + hd/2] sin θ
//   x'[d + hd/2] = x[d + hd/2] cos θ + x[d] sin θ
#pragma once

namespace loom::kernels::cpu {

// cos, sin (T, hd/2) for positions first_position .. first_position + T − 1 (computed in double,
// stored as float). hd is even.
void rope_table(float* cos, float* sin, int T, int hd, float theta, int first_position = 0);

// Rotates q (H heads) and k (kv_heads heads) of qkv (B, T, C + 2·kv_heads·hd) in place; v is
// untouched. cos and sin come from rope_table with at least T rows and hd = C / H.
// inverse = true applies the transposed rotation (−θ), which is the backward of the forward
// rotation.
void rope_apply(float* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                int kv_heads, bool inverse);

}  // namespace loom::kernels::cpu
