// Fused LM head + softmax cross-entropy (+ its gradient), processed in row chunks so the full
// (N, V) logits are never stored: only a (chunk, V) scratch block exists at a time.
//
//   double loss_sum = lm_head_cross_entropy(dx, dW, x, W, targets, N, C, V, 1.0f / N,
//                                           scratch, chunk);
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// Floats of scratch for a given chunk (rows) and vocabulary size.
size_t lm_head_scratch_floats(int chunk, int V);

// logits = x (N, C) · weight (V, C)ᵀ; loss_n = logsumexp(logits_n) − logits_n[targets[n]],
// with every target in [0, V). Returns Σ_n loss_n, summed in double in row order.
// When dx is non-null, with dlogits = (softmax(logits) − onehot(target)) · grad_scale:
//   dx (N, C) = dlogits · weight        — overwritten
//   dweight (V, C) += dlogitsᵀ · x       — accumulated; skipped when dweight is null
// scratch holds lm_head_scratch_floats(chunk, V) floats.
double lm_head_cross_entropy(float* dx, float* dweight, const float* x, const float* weight,
                             const int* targets, int N, int C, int V, float grad_scale,
                             float* scratch, int chunk);

// --- vocabulary-parallel pieces (parallel/vocab_parallel.cpp runs them around its reductions)
// A block of logits (n, Vl) holds vocabulary columns [vocab_begin, vocab_begin + Vl) of which
// the first `valid` (0 ≤ valid ≤ Vl) are real tokens; the rest is padding and is ignored.

// row_max (n) = max over the valid columns; −∞ when valid = 0 — overwritten.
void cross_entropy_local_max(float* row_max, const float* logits, int n, int Vl, int valid);

// With the global row_max: sums (n, 2) — overwritten — [Σ_valid exp(logit − row_max), the
// target's logit when this block holds it, else 0].
void cross_entropy_local_sums(float* sums, const float* logits, const float* row_max,
                              const int* targets, int n, int Vl, int valid, int vocab_begin);

// With the global sums: Σ_i log(sums[i, 0]) + row_max[i] − sums[i, 1], in double, row order.
double cross_entropy_local_loss(const float* row_max, const float* sums, int n);

// logits ← dlogits = (exp(logit − row_max) / sums[i, 0] − [column is the target]) · grad_scale
// on valid columns, 0 on padding — in place.
void cross_entropy_local_grad(float* logits, const float* row_max, const float* sums,
                              const int* targets, int n, int Vl, int valid, int vocab_begin,
                              float grad_scale);

}  // namespace loom::kernels::cpu
