// Vocabulary-parallel LM head and cross-entropy (Megatron's vocab-parallel cross-entropy): each
// tensor-parallel rank holds a slice of the (padded) vocabulary's rows of the head, computes its
// slice of the logits a chunk of rows at a time, and the softmax statistics are reduced over the
// group in fp32 — local max → all-reduce MAX; Σ exp and the target's logit → one all-reduce
// SUM — so full-vocabulary logits never exist on one rank.
//
//   loom::VocabShard shard = loom::vocab_shard(V, tp.size(), tp.rank());
//   std::vector<char> scratch(loom::vocab_parallel_scratch_bytes(be, chunk, shard.rows));
//   double loss_sum = loom::vocab_parallel_cross_entropy(be, tp, dx, dW, x, W, targets, N, C,
//                                                        shard, 1.0f / N, scratch.data(), chunk);
#pragma once
#include <cstddef>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

// Rows [vocab_begin, vocab_begin + rows) of the vocabulary padded to a multiple of the ranks;
// the first `valid` of them are real tokens (fewer only on the last ranks).
struct VocabShard {
  int vocab_begin = 0, rows = 0, valid = 0;
};

// Rank `rank` of `parts`: rows = ⌈V / parts⌉, vocab_begin = rank · rows,
// valid = clamp(V − vocab_begin, 0, rows).
VocabShard vocab_shard(int V, int parts, int rank);

size_t vocab_parallel_scratch_bytes(const kernels::KernelBackend& be, int chunk, int rows);

// logits = x (N, C) · weight (rows, C)ᵀ for this rank's rows, `chunk` rows of x at a time.
// Returns Σ_n (logsumexp over the whole vocabulary − the target's logit), the same on every rank.
// When dx is non-null, with dlogits = (softmax − onehot) · grad_scale: dx (N, C) = dlogits ·
// weight summed over the group — overwritten, complete on every rank on return; dweight (rows,
// C) += dlogitsᵀ · x for this rank's rows (padding rows get 0; skipped when null). Collective
// over tp (every rank calls it with the same N, C, chunk and targets). When wait_seconds is
// non-null, the time blocked on the group's reductions is added to it. scratch holds
// vocab_parallel_scratch_bytes(be, chunk, shard.rows) bytes.
double vocab_parallel_cross_entropy(const kernels::KernelBackend& be, Communicator& tp, void* dx,
                                    float* dweight, const void* x, const void* weight,
                                    const int* targets, int N, int C, const VocabShard& shard,
                                    float grad_scale, void* scratch, int chunk,
                                    double* wait_seconds = nullptr);

}  // namespace loom
