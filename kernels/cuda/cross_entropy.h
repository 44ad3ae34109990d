// Fused LM head + softmax cross-entropy (+ its gradient) on the GPU, in row chunks so the full
// (N, V) logits never exist: the contract of kernels/cpu/cross_entropy.h plus a Context, for
// activations of type Act (float or __nv_bfloat16). The loss, which the CPU kernel returns, is
// written to a device double instead, so nothing waits for the GPU.
//
// Per chunk of rows: logits (rows, V) = x · weightᵀ in fp32 (cuBLASLt, fp32 output even for bf16
// inputs); one block per row finds the max and Σexp in fp32, writes the row's loss and overwrites
// the logits with dlogits = (softmax − onehot) · grad_scale (as Act, in place: for bf16 each row's
// gradient occupies the first half of its own fp32 row); then dx = dlogits · weight and
// dweight += dlogitsᵀ · x (cuBLASLt). Every reduction has a fixed order: bitwise reproducible.
//
//   DeviceMemory scratch = device_alloc(lm_head_scratch_bytes(chunk, V));
//   lm_head_cross_entropy<__nv_bfloat16>(ctx, loss_sum, dx, dweight, x, weight, targets, N, C, V,
//                                        1.0f / N, scratch.get(), chunk, &cache);
#pragma once
#include <cstddef>

#include "kernels/cuda/context.h"
#include "kernels/cuda/matmul.h"

namespace loom::kernels::cuda {

// Bytes of scratch for a given chunk (rows) and vocabulary size: the (chunk, V) fp32 logits block
// and one fp32 loss per row of the chunk.
size_t lm_head_scratch_bytes(int chunk, int V);

// logits = x (N, C) · weight (V, C)ᵀ; loss_n = logsumexp(logits_n) − logits_n[targets[n]], with
// every target in [0, V) (a target outside gives a NaN loss, never an out-of-bounds read).
// *loss_sum (device, double) = Σ_n loss_n — overwritten; rows' losses are fp32, their sum double.
// When dx is non-null, with dlogits = (softmax(logits) − onehot(target)) · grad_scale:
//   dx (N, C) = dlogits · weight        — overwritten
//   dweight (V, C) += dlogitsᵀ · x       — accumulated (float); skipped when dweight is null
// targets (N) are device ints; scratch holds lm_head_scratch_bytes(chunk, V) bytes (256-byte
// aligned, as cudaMalloc returns); chunk > 0.
template <typename Act>
void lm_head_cross_entropy(const Context& ctx, double* loss_sum, Act* dx, float* dweight,
                           const Act* x, const Act* weight, const int* targets, int N, int C, int V,
                           float grad_scale, void* scratch, int chunk,
                           MatmulCache* cache = nullptr);

// --- vocabulary-parallel pieces: the contracts of kernels/cpu/cross_entropy.h on device memory.
// A block of logits (n, Vl) holds vocabulary columns [vocab_begin, vocab_begin + Vl), the first
// `valid` real, the rest padding (ignored). One block per row; fixed reduction orders.

// row_max (n) = max over the valid columns (−∞ when valid = 0) — overwritten.
template <typename Act>
void cross_entropy_local_max(const Context& ctx, float* row_max, const Act* logits, int n, int Vl,
                             int valid);
// sums (n, 2) = [Σ_valid exp(logit − row_max), the target's logit if held here else 0] —
// overwritten; targets (n) device ints.
template <typename Act>
void cross_entropy_local_sums(const Context& ctx, float* sums, const Act* logits,
                              const float* row_max, const int* targets, int n, int Vl, int valid,
                              int vocab_begin);
// *loss_sum (device double) = Σ_i log(sums[i, 0]) + row_max[i] − sums[i, 1] — overwritten.
void cross_entropy_local_loss(const Context& ctx, double* loss_sum, const float* row_max,
                              const float* sums, int n);
// logits ← (exp(logit − row_max) / sums[i, 0] − [column is the target]) · grad_scale on valid
// columns, 0 on padding — in place.
template <typename Act>
void cross_entropy_local_grad(const Context& ctx, Act* logits, const float* row_max,
                              const float* sums, const int* targets, int n, int Vl, int valid,
                              int vocab_begin, float grad_scale);

}  // namespace loom::kernels::cuda
