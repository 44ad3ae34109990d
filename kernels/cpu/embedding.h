// Token (+ learned position) embedding.
#pragma once

namespace loom::kernels::cpu {

// out (B, T, C) = wte[tokens[b, t]] + wpe[t]. wpe may be null (rotary models).
void embedding_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                       int T, int C);

// dwte (V, C) += scatter of dout rows by token; dwpe (T, C) += Σ_b dout (skipped when null).
// Deterministic: the summation order does not depend on thread timing.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B,
                        int T, int C);

}  // namespace loom::kernels::cpu
