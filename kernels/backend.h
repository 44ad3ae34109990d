// The kernel backend: the one seam between the model's math and the kernels that run it.
//
// kernels/cpu/ and kernels/cuda/ implement the same kernels as free functions; the CUDA ones are
// templated on the activation type (float or __nv_bfloat16) and take a Context first. A
// KernelBackend binds one implementation, its activation type and (on a GPU) its context behind
// one virtual method per kernel the model uses, and owns the memory they work on, so
// core/model*.cpp compute the same layers on any backend. The backends today: the CPU at fp32
// (kernels/cpu/backend.cpp) and bf16 (kernels/cpu/backend_bf16.cpp), and the emulated device
// over either (kernels/emulated/backend.h), and the GPU at fp32 or bf16 (kernels/cuda/backend.h,
// in CUDA builds). They are created in one place, loom::make_backend (core/backend.h).
//
// Pointer kinds, the same on every backend:
//   activations (`void*` / `const void*`): elements of activation_bytes() each (4: fp32; 2:
//     bf16), in the backend's memory. The weights a kernel reads (matmul
//     and norm weights and biases, embedding tables, the LM head) are passed the same way: a
//     low-precision backend reads a copy of the fp32 master weights in its activation type.
//   statistics (`float*`): mean, rstd (N) of the norms, lse (B, H, T) of attention, the rotary
//     cos/sin tables (T, hd/2). Always fp32.
//   parameter gradients (`float*`): always fp32, always accumulated (+=).
//   tokens and targets (`const int*`).
//   scratch (`void*`): at least the number of bytes the matching *_scratch_bytes method returns.
// Overwrite / accumulate contracts are those of the kernels/cpu headers and are repeated below.
// Every pointer a kernel takes is the backend's memory (allocate), never the host's: on a device
// the host reaches it only through upload and download. Kernels may run asynchronously, in issue
// order; those that return a value (lm_head_cross_entropy, cross_entropy_local_loss,
// sum_squares) wait for their own work.
//
//   std::shared_ptr<const loom::kernels::KernelBackend> be = loom::make_backend(cfg.runtime());
//   loom::kernels::DeviceArray<char> scratch(be, be->attention_scratch_bytes(B, T, C, H));
//   be->attention_forward(out, lse, qkv, B, T, C, H, scratch.data());
#pragma once
#include <cstddef>
#include <memory>

#include "kernels/attention_block.h"

namespace loom::kernels {

class KernelBackend {
 public:
  virtual ~KernelBackend() = default;

  // Short name for logs and errors ("cpu", "cuda-bf16", ...).
  virtual const char* name() const = 0;
  // Bytes of one activation element: 4 for fp32, 2 for bf16.
  virtual size_t activation_bytes() const = 0;

  // --- memory: the backend owns it (kernels/device_array.h holds it) ---
  // On a device backend the host never dereferences this memory: it moves only through upload,
  // download and the kernels. All of it runs in issue order on the backend's stream.
  // `bytes` (> 0) aligned to 64 bytes, zeroed. Throws std::bad_alloc when there is none.
  virtual void* allocate(size_t bytes) const = 0;
  virtual void deallocate(void* p) const = 0;
  // dst (device) ← src (host), `bytes`; returns once src may be reused.
  virtual void upload(void* dst, const void* src, size_t bytes) const = 0;
  // dst (host) ← src (device), after the work issued before it; returns with dst written.
  virtual void download(void* dst, const void* src, size_t bytes) const = 0;
  // dst ← src (both device memory, not overlapping) and x ← 0, in bytes.
  virtual void copy_bytes(void* dst, const void* src, size_t bytes) const = 0;
  virtual void zero_bytes(void* x, size_t bytes) const = 0;
  // Returns once every kernel and copy issued so far has finished.
  virtual void synchronize() const = 0;
  // True when this memory is the host's and every call has finished when it returns (the CPU
  // backends): the host may then read and write it in place instead of copying it.
  virtual bool host_addressable() const = 0;
  // For a transport that reads and writes this memory from threads of its own, unaware of the
  // backend's stream (MPI): waits for the work issued so far, and keeps the memory reachable by
  // the host until the returned token is released. Null where there is nothing to keep.
  virtual std::shared_ptr<void> lend_to_host() const = 0;
  // True when p lies in memory of this backend that the host cannot reach at all (a GPU's):
  // such a buffer moves between ranks only through a transport that works on the device
  // (parallel/device_communicator.h). False on the CPU and the emulated device.
  virtual bool device_memory(const void* /*p*/) const { return false; }
  // The device's stream (a cudaStream_t) that a device transport orders its work after, and the
  // device's index; null and -1 where there is none.
  virtual void* stream() const { return nullptr; }
  virtual int device() const { return -1; }
  // Bytes this backend can still allocate, where it has memory of its own (a GPU's free
  // memory); 0 where its memory is the host's.
  virtual double memory_available() const { return 0; }
  // The most bytes of this backend's own memory allocated at once so far (a GPU's, the emulated
  // device's); 0 where its memory is the host's.
  virtual double memory_peak() const { return 0; }
  // Bytes every buffer a kernel takes (scratch above all) must be aligned to: what allocate
  // returns, and what the model's arena rounds each region to.
  virtual size_t alignment() const { return 64; }

  // --- optimizer and gradient statistics (fp32 master weights, gradients and moments) ---
  // AdamW over n elements, as kernels/cpu/adamw.h: p, m, v updated in place; step is 1-based.
  virtual void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                            float lr, float beta1, float beta2, float eps, float weight_decay,
                            long step, float grad_scale) const = 0;
  // Σ x² over n elements, in double. Waits for the result.
  virtual double sum_squares(const float* x, size_t n) const = 0;
  // y (n) += x (n), fp32.
  virtual void accumulate(float* y, const float* x, size_t n) const = 0;
  // dst (n activation elements) ← src (n fp32), rounded to nearest even: the low-precision copy
  // of the master weights a bf16 backend's kernels read; and back, exactly.
  virtual void to_activation(void* dst, const float* src, size_t n) const = 0;
  virtual void from_activation(float* dst, const void* src, size_t n) const = 0;

  // --- memory of activations (may live on a device) ---
  // dst (n) = src (n), n activation elements; the ranges do not overlap.
  virtual void copy(void* dst, const void* src, size_t n) const = 0;
  // x (n) = 0.
  virtual void zero(void* x, size_t n) const = 0;
  // dst (rows, cols), rows dst_ld apart = src (rows, cols), rows src_ld apart: a column range
  // of a row-major tensor. The ranges do not overlap.
  virtual void copy_rows(void* dst, size_t dst_ld, const void* src, size_t src_ld, size_t rows,
                         size_t cols) const = 0;

  // --- embedding; wte holds vocabulary rows [vocab_begin, vocab_begin + vocab_rows) ---
  // out (B, T, C) = wte[tokens[b, t] − vocab_begin] (0 for tokens outside the range) + wpe[t] —
  // overwritten. wpe may be null (rotary models).
  virtual void embedding_forward(void* out, const int* tokens, const void* wte, const void* wpe,
                                 int B, int T, int C, int vocab_begin, int vocab_rows) const = 0;
  virtual size_t embedding_backward_scratch_bytes(int B, int T, int C) const = 0;
  // dwte (vocab_rows, C) += scatter of dout rows by token (in range only); dwpe (T, C) +=
  // Σ_b dout (skipped when null). Deterministic.
  virtual void embedding_backward(float* dwte, float* dwpe, const void* dout, const int* tokens,
                                  int B, int T, int C, int vocab_begin, int vocab_rows,
                                  void* scratch) const = 0;

  // --- pre-norms over the last dimension C of N rows ---
  // out (N, C) = (inp − mean) · rstd · weight + bias — overwritten; mean, rstd (N) saved.
  virtual void layernorm_forward(void* out, float* mean, float* rstd, const void* inp,
                                 const void* weight, const void* bias, int N, int C,
                                 float eps) const = 0;
  virtual size_t layernorm_backward_scratch_bytes(int N, int C) const = 0;
  // dinp (N, C) +=; dweight (C) +=; dbias (C) +=.
  virtual void layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                                  const void* inp, const void* weight, const float* mean,
                                  const float* rstd, int N, int C, void* scratch) const = 0;
  // out (N, C) = inp · rstd · weight, rstd = 1/sqrt(mean(inp²) + eps) — overwritten; rstd saved.
  virtual void rmsnorm_forward(void* out, float* rstd, const void* inp, const void* weight, int N,
                               int C, float eps) const = 0;
  virtual size_t rmsnorm_backward_scratch_bytes(int N, int C) const = 0;
  // dinp (N, C) +=; dweight (C) +=.
  virtual void rmsnorm_backward(void* dinp, float* dweight, const void* dout, const void* inp,
                                const void* weight, const float* rstd, int N, int C,
                                void* scratch) const = 0;

  // --- dense layers, weights (OC, IC) as torch.nn.Linear ---
  // out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC) — overwritten. bias may be null.
  virtual void matmul_forward(void* out, const void* inp, const void* weight, const void* bias,
                              int N, int IC, int OC) const = 0;
  // dinp (N, IC) = dout · weight — overwritten; skipped when null.
  // dweight (OC, IC) += doutᵀ · inp (skipped when null); dbias (OC) += Σ_n dout[n] (skipped
  // when null).
  virtual void matmul_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                               const void* inp, const void* weight, int N, int IC,
                               int OC) const = 0;

  // --- causal attention over qkv (B, T, C + 2·Ckv): H query heads of hd = C / H, kv_heads
  // key/value heads (Ckv = kv_heads·hd; grouped-query when kv_heads < H; layout in
  // kernels/attention_block.h) ---
  virtual size_t attention_scratch_bytes(int B, int T, int C, int H) const = 0;
  // out (B, T, C) and lse (B, H, T) — overwritten.
  virtual void attention_forward(void* out, float* lse, const void* qkv, int B, int T, int C, int H,
                                 int kv_heads, void* scratch) const = 0;
  // dqkv (B, T, C + 2·Ckv) — overwritten — from dout (B, T, C) and the forward's qkv, out, lse.
  virtual void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                  const float* lse, int B, int T, int C, int H, int kv_heads,
                                  void* scratch) const = 0;

  // --- blocks of ring (sequence-parallel) attention; shapes in kernels/attention_block.h ---
  // Scratch for blocks of up to q_len query rows (per sequence and head) and kv_rows key rows.
  virtual size_t attention_block_scratch_bytes(int B, int H, int q_len, int kv_rows) const = 0;
  // The block's rows of out and lse — overwritten (a row that sees no key: out 0, lse −∞).
  virtual void attention_block_forward(void* out, float* lse, const void* q, const void* kv,
                                       const AttentionBlock& blk, void* scratch) const = 0;
  // out, lse ← the log-sum-exp merge of (out, lse) and (block_out, block_lse) over the block's
  // query rows, in fp32.
  virtual void attention_merge(void* out, float* lse, const void* block_out, const float* block_lse,
                               const AttentionBlock& blk) const = 0;
  // dq (layout of q) += and dkv (layout of kv) += the block's share of the gradient, from dout
  // and the merged out and lse of the whole attention.
  virtual void attention_block_backward(void* dq, void* dkv, const void* dout, const void* q,
                                        const void* kv, const void* out, const float* lse,
                                        const AttentionBlock& blk, void* scratch) const = 0;

  // --- rotary position embedding ---
  // cos, sin (T, hd/2) — overwritten — for positions first_position .. first_position + T − 1.
  virtual void rope_table(float* cos, float* sin, int T, int hd, float theta,
                          int first_position) const = 0;
  // Rotates q and k of qkv (B, T, C + 2·Ckv) in place; inverse applies −θ (the backward).
  virtual void rope_apply(void* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                          int kv_heads, bool inverse) const = 0;

  // --- elementwise ---
  // out (n) = gelu(inp), tanh approximation — overwritten. out may alias inp.
  virtual void gelu_forward(void* out, const void* inp, size_t n) const = 0;
  // dinp (n) = gelu'(inp) · dout — overwritten. dinp may alias dout.
  virtual void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) const = 0;
  // SwiGLU: out (N, F) = silu(gate) ∘ up, from inp (N, 2F) whose row is [gate (F) | up (F)] —
  // overwritten.
  virtual void swiglu_forward(void* out, const void* inp, int N, int F) const = 0;
  // dinp (N, 2F) — overwritten — from dout (N, F) and the forward's inp.
  virtual void swiglu_backward(void* dinp, const void* inp, const void* dout, int N,
                               int F) const = 0;
  // y (n) += x (n).
  virtual void vector_add(void* y, const void* x, size_t n) const = 0;
  // y (n) = a (n) + b (n). y may alias a or b.
  virtual void vector_sum(void* y, const void* a, const void* b, size_t n) const = 0;

  // --- routing (Mixture-of-Recursions): rows of an (·, C) activation tensor ---
  // dst (n, C) — overwritten — row i = scale_i · src row rows[i], scale_i = scale ? scale[i] : 1
  // (fp32). dst and src do not overlap.
  virtual void gather_rows(void* dst, const void* src, const int* rows, const float* scale, int n,
                           int C) const = 0;
  // dst row rows[i] += factor · scale_i · src row i (scale_i as above), for i < n; the rows are
  // distinct.
  virtual void scatter_add_rows(void* dst, const void* src, const int* rows, const float* scale,
                                float factor, int n, int C) const = 0;
  // out[i] (fp32) = Σ_c a[rows[i], c] · b[i, c] — overwritten — accumulated in fp32 (or wider).
  virtual void row_dots(float* out, const void* a, const void* b, const int* rows, int n,
                        int C) const = 0;

  // --- fused LM head + cross-entropy, in row chunks of the (N, V) logits ---
  virtual size_t lm_head_scratch_bytes(int chunk, int V) const = 0;
  // logits = x (N, C) · weight (V, C)ᵀ; returns Σ_n logsumexp(logits_n) − logits_n[targets[n]]
  // (summed in double). When dx is non-null, with dlogits = (softmax − onehot) · grad_scale:
  // dx (N, C) = dlogits · weight — overwritten; dweight (V, C) += dlogitsᵀ · x (skipped when
  // null). Waits for the result.
  virtual double lm_head_cross_entropy(void* dx, float* dweight, const void* x, const void* weight,
                                       const int* targets, int N, int C, int V, float grad_scale,
                                       void* scratch, int chunk) const = 0;

  // --- vocabulary-parallel cross-entropy over a block of logits (n, Vl) holding vocabulary
  // columns [vocab_begin, vocab_begin + Vl), the first `valid` real, the rest padding (ignored);
  // parallel/vocab_parallel.cpp reduces the statistics over the tensor-parallel ranks ---
  // row_max (n) = max over the valid columns (−∞ when valid = 0) — overwritten.
  virtual void cross_entropy_local_max(float* row_max, const void* logits, int n, int Vl,
                                       int valid) const = 0;
  // sums (n, 2) = [Σ_valid exp(logit − row_max), the target's logit if held here else 0] —
  // overwritten.
  virtual void cross_entropy_local_sums(float* sums, const void* logits, const float* row_max,
                                        const int* targets, int n, int Vl, int valid,
                                        int vocab_begin) const = 0;
  // Σ_i log(sums[i, 0]) + row_max[i] − sums[i, 1] in double. Waits for the result.
  virtual double cross_entropy_local_loss(const float* row_max, const float* sums, int n) const = 0;
  // logits ← (softmax − onehot) · grad_scale on valid columns, 0 on padding — in place.
  virtual void cross_entropy_local_grad(void* logits, const float* row_max, const float* sums,
                                        const int* targets, int n, int Vl, int valid,
                                        int vocab_begin, float grad_scale) const = 0;
};

}  // namespace loom::kernels
