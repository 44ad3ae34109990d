// Token (+ learned position) embedding.
#pragma once

namespace loom::kernels::cpu {

// wte holds the vocabulary rows [vocab_begin, vocab_begin + vocab_rows) (all of it: 0, V; a
// tensor-parallel rank: its slice). Tokens outside that range look up zeros and get no gradient.

// out (B, T, C) = wte[tokens[b, t] − vocab_begin] (0 outside the range) + wpe[t] — overwritten.
// wpe may be null (rotary models).
void embedding_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, int vocab_begin, int vocab_rows);

// dwte (vocab_rows, C) += scatter of dout rows by token (tokens in range only); dwpe (T, C) +=
// Σ_b dout (skipped when null). Deterministic: the summation order does not depend on thread
// timing.
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B,
                        int T, int C, int vocab_begin, int vocab_rows);

}  // namespace loom::kernels::cpu
