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

}  // namespace loom::kernels::cpu
