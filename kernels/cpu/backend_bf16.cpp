// The CPU backend with bf16 activations: storage only. Every kernel reads its bf16 operands into
// fp32 buffers, runs the fp32 kernel of kernels/cpu/ and rounds its activation outputs back to
// bf16 (parameter gradients, statistics and moments are fp32 throughout, as on a GPU). Debian's
// OpenBLAS is built without its bf16 GEMM (cblas_sbgemm), so the matrix products are sgemm on
// the converted operands whatever bf16 instructions the CPU has. docs/architecture.md says what
// this buys: the memory and the messages of a bf16 run, not its speed.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/bf16.h"

namespace loom::kernels::cpu {

void bf16_load(float* out, const void* in, size_t n) {
  const uint16_t* h = static_cast<const uint16_t*>(in);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(h[i]);
}

void bf16_store(void* out, const float* in, size_t n) {
  uint16_t* h = static_cast<uint16_t*>(out);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (size_t i = 0; i < n; ++i) h[i] = bf16_from_float(in[i]);
}

namespace {

uint16_t* h16(void* p) { return static_cast<uint16_t*>(p); }
const uint16_t* h16(const void* p) { return static_cast<const uint16_t*>(p); }

// Elements an attention block's q (or kv) array spans: up to the last column of the last row.
size_t q_extent(const AttentionBlock& b) {
  return (static_cast<size_t>(b.B) * b.q_len - 1) * b.q_ld + static_cast<size_t>(b.H) * b.hd;
}
size_t kv_extent(const AttentionBlock& b) {
  return (static_cast<size_t>(b.B) * b.kv_len - 1) * b.kv_ld + b.v_offset +
         static_cast<size_t>(b.kv_head_count()) * b.hd;
}
size_t out_extent(const AttentionBlock& b) {
  return static_cast<size_t>(b.B) * b.q_len * b.H * b.hd;
}

class CpuBf16Backend final : public KernelBackend {
 public:
  const char* name() const override { return "cpu-bf16"; }
  size_t activation_bytes() const override { return 2; }

  // Memory, the optimizer and fp32 statistics: as the fp32 backend.
  void* allocate(size_t bytes) const override { return fp32_->allocate(bytes); }
  void deallocate(void* p) const override { fp32_->deallocate(p); }
  void upload(void* dst, const void* src, size_t bytes) const override {
    fp32_->upload(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) const override {
    fp32_->download(dst, src, bytes);
  }
  void copy_bytes(void* dst, const void* src, size_t bytes) const override {
    fp32_->copy_bytes(dst, src, bytes);
  }
  void zero_bytes(void* x, size_t bytes) const override { fp32_->zero_bytes(x, bytes); }
  void synchronize() const override {}
  bool host_addressable() const override { return true; }
  std::shared_ptr<void> lend_to_host() const override { return nullptr; }
  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, long step,
                    float grad_scale) const override {
    fp32_->adamw_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step,
                        grad_scale);
  }
  double sum_squares(const float* x, size_t n) const override { return fp32_->sum_squares(x, n); }
  void accumulate(float* y, const float* x, size_t n) const override { fp32_->accumulate(y, x, n); }
  void to_activation(void* dst, const float* src, size_t n) const override {
    bf16_store(dst, src, n);
  }
  void from_activation(float* dst, const void* src, size_t n) const override {
    bf16_load(dst, src, n);
  }

  void copy(void* dst, const void* src, size_t n) const override { std::memcpy(dst, src, 2 * n); }
  void zero(void* x, size_t n) const override { std::memset(x, 0, 2 * n); }
  void copy_rows(void* dst, size_t dst_ld, const void* src, size_t src_ld, size_t rows,
                 size_t cols) const override {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(h16(dst) + r * dst_ld, h16(src) + r * src_ld, 2 * cols);
  }

  void embedding_forward(void* out, const int* tokens, const void* wte, const void* wpe, int B,
                         int T, int C, int vocab_begin, int vocab_rows) const override {
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; ++bt) {
      const int row = tokens[bt] - vocab_begin;
      const bool held = row >= 0 && row < vocab_rows;
      const uint16_t* w = held ? h16(wte) + static_cast<size_t>(row) * C : nullptr;
      const uint16_t* p = wpe ? h16(wpe) + static_cast<size_t>(bt % T) * C : nullptr;
      uint16_t* o = h16(out) + static_cast<size_t>(bt) * C;
      for (int c = 0; c < C; ++c)
        o[c] = bf16_from_float((w ? bf16_to_float(w[c]) : 0.0f) + (p ? bf16_to_float(p[c]) : 0.0f));
    }
  }
  size_t embedding_backward_scratch_bytes(int B, int T, int C) const override {
    return fp32_->embedding_backward_scratch_bytes(B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const void* dout, const int* tokens, int B,
                          int T, int C, int vocab_begin, int vocab_rows,
                          void* scratch) const override {
    const size_t n = static_cast<size_t>(B) * T * C;
    fp32_->embedding_backward(dwte, dwpe, in(0, dout, n), tokens, B, T, C, vocab_begin, vocab_rows,
                              scratch);
  }

  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C, float eps) const override {
    const size_t n = static_cast<size_t>(N) * C;
    float* o = buffer(3, n);
    fp32_->layernorm_forward(o, mean, rstd, in(0, inp, n), in(1, weight, C), in(2, bias, C), N, C,
                             eps);
    bf16_store(out, o, n);
  }
  size_t layernorm_backward_scratch_bytes(int N, int C) const override {
    return fp32_->layernorm_backward_scratch_bytes(N, C);
  }
  void layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                          const void* inp, const void* weight, const float* mean, const float* rstd,
                          int N, int C, void* scratch) const override {
    const size_t n = static_cast<size_t>(N) * C;
    float* d = in(3, dinp, n);
    fp32_->layernorm_backward(d, dweight, dbias, in(0, dout, n), in(1, inp, n), in(2, weight, C),
                              mean, rstd, N, C, scratch);
    bf16_store(dinp, d, n);
  }
  void rmsnorm_forward(void* out, float* rstd, const void* inp, const void* weight, int N, int C,
                       float eps) const override {
    const size_t n = static_cast<size_t>(N) * C;
    float* o = buffer(3, n);
    fp32_->rmsnorm_forward(o, rstd, in(0, inp, n), in(1, weight, C), N, C, eps);
    bf16_store(out, o, n);
  }
  size_t rmsnorm_backward_scratch_bytes(int N, int C) const override {
    return fp32_->rmsnorm_backward_scratch_bytes(N, C);
  }
  void rmsnorm_backward(void* dinp, float* dweight, const void* dout, const void* inp,
                        const void* weight, const float* rstd, int N, int C,
                        void* scratch) const override {
    const size_t n = static_cast<size_t>(N) * C;
    float* d = in(3, dinp, n);
    fp32_->rmsnorm_backward(d, dweight, in(0, dout, n), in(1, inp, n), in(2, weight, C), rstd, N, C,
                            scratch);
    bf16_store(dinp, d, n);
  }

  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N,
                      int IC, int OC) const override {
    const size_t n_out = static_cast<size_t>(N) * OC;
    float* o = buffer(3, n_out);
    fp32_->matmul_forward(o, in(0, inp, static_cast<size_t>(N) * IC),
                          in(1, weight, static_cast<size_t>(OC) * IC), in(2, bias, OC), N, IC, OC);
    bf16_store(out, o, n_out);
  }
  void matmul_backward(void* dinp, float* dweight, float* dbias, const void* dout, const void* inp,
                       const void* weight, int N, int IC, int OC) const override {
    const size_t n_in = static_cast<size_t>(N) * IC;
    float* d = dinp ? buffer(3, n_in) : nullptr;
    fp32_->matmul_backward(d, dweight, dbias, in(0, dout, static_cast<size_t>(N) * OC),
                           dweight ? in(1, inp, n_in) : nullptr,
                           dinp ? in(2, weight, static_cast<size_t>(OC) * IC) : nullptr, N, IC, OC);
    if (dinp) bf16_store(dinp, d, n_in);
  }

  size_t attention_scratch_bytes(int B, int T, int C, int H) const override {
    return fp32_->attention_scratch_bytes(B, T, C, H);
  }
  void attention_forward(void* out, float* lse, const void* qkv, int B, int T, int C, int H,
                         int kv_heads, void* scratch) const override {
    const size_t n = static_cast<size_t>(B) * T * C;
    const size_t n_qkv = static_cast<size_t>(B) * T * qkv_width(C, H, kv_heads);
    float* o = buffer(3, n);
    fp32_->attention_forward(o, lse, in(0, qkv, n_qkv), B, T, C, H, kv_heads, scratch);
    bf16_store(out, o, n);
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int B, int T, int C, int H, int kv_heads,
                          void* scratch) const override {
    const size_t n = static_cast<size_t>(B) * T * C;
    const size_t n_qkv = static_cast<size_t>(B) * T * qkv_width(C, H, kv_heads);
    float* d = buffer(3, n_qkv);
    fp32_->attention_backward(d, in(0, dout, n), in(1, qkv, n_qkv), in(2, out, n), lse, B, T, C, H,
                              kv_heads, scratch);
    bf16_store(dqkv, d, n_qkv);
  }

  size_t attention_block_scratch_bytes(int B, int H, int q_len, int kv_rows) const override {
    return fp32_->attention_block_scratch_bytes(B, H, q_len, kv_rows);
  }
  // The block kernels overwrite or add to only the block's rows: outputs are read in whole and
  // stored back (rows the kernel leaves are bf16 → fp32 → bf16, unchanged).
  void attention_block_forward(void* out, float* lse, const void* q, const void* kv,
                               const AttentionBlock& blk, void* scratch) const override {
    float* o = in(3, out, out_extent(blk));
    fp32_->attention_block_forward(o, lse, in(0, q, q_extent(blk)), in(1, kv, kv_extent(blk)), blk,
                                   scratch);
    bf16_store(out, o, out_extent(blk));
  }
  void attention_merge(void* out, float* lse, const void* block_out, const float* block_lse,
                       const AttentionBlock& blk) const override {
    float* o = in(3, out, out_extent(blk));
    fp32_->attention_merge(o, lse, in(0, block_out, out_extent(blk)), block_lse, blk);
    bf16_store(out, o, out_extent(blk));
  }
  void attention_block_backward(void* dq, void* dkv, const void* dout, const void* q,
                                const void* kv, const void* out, const float* lse,
                                const AttentionBlock& blk, void* scratch) const override {
    float* g_q = in(4, dq, q_extent(blk));
    float* g_kv = in(5, dkv, kv_extent(blk));
    fp32_->attention_block_backward(g_q, g_kv, in(0, dout, out_extent(blk)),
                                    in(1, q, q_extent(blk)), in(2, kv, kv_extent(blk)),
                                    in(3, out, out_extent(blk)), lse, blk, scratch);
    bf16_store(dq, g_q, q_extent(blk));
    bf16_store(dkv, g_kv, kv_extent(blk));
  }

  void rope_table(float* cos, float* sin, int T, int hd, float theta,
                  int first_position) const override {
    fp32_->rope_table(cos, sin, T, hd, theta, first_position);
  }
  void rope_apply(void* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                  int kv_heads, bool inverse) const override {
    const size_t n = static_cast<size_t>(B) * T * qkv_width(C, H, kv_heads);
    float* x = in(0, qkv, n);
    fp32_->rope_apply(x, cos, sin, B, T, C, H, kv_heads, inverse);
    bf16_store(qkv, x, n);
  }

  void gelu_forward(void* out, const void* inp, size_t n) const override {
    float* x = in(0, inp, n);
    fp32_->gelu_forward(x, x, n);
    bf16_store(out, x, n);
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) const override {
    float* d = in(1, dout, n);
    fp32_->gelu_backward(d, in(0, inp, n), d, n);
    bf16_store(dinp, d, n);
  }
  void swiglu_forward(void* out, const void* inp, int N, int F) const override {
    const size_t n = static_cast<size_t>(N) * F;
    float* o = buffer(3, n);
    fp32_->swiglu_forward(o, in(0, inp, 2 * n), N, F);
    bf16_store(out, o, n);
  }
  void swiglu_backward(void* dinp, const void* inp, const void* dout, int N, int F) const override {
    const size_t n = static_cast<size_t>(N) * F;
    float* d = buffer(3, 2 * n);
    fp32_->swiglu_backward(d, in(0, inp, 2 * n), in(1, dout, n), N, F);
    bf16_store(dinp, d, 2 * n);
  }
  void vector_add(void* y, const void* x, size_t n) const override {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; ++i)
      h16(y)[i] = bf16_from_float(bf16_to_float(h16(y)[i]) + bf16_to_float(h16(x)[i]));
  }
  void vector_sum(void* y, const void* a, const void* b, size_t n) const override {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; ++i)
      h16(y)[i] = bf16_from_float(bf16_to_float(h16(a)[i]) + bf16_to_float(h16(b)[i]));
  }

  // The routing kernels touch only the rows they name (src and a have no row count here), so
  // they convert row by row, as the fp32 kernels (kernels/cpu/routing.cpp) compute: in fp32
  // (dots in double), each result rounded to bf16 once.
  void gather_rows(void* dst, const void* src, const int* rows, const float* scale, int n,
                   int C) const override {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) {
      const uint16_t* x = h16(src) + static_cast<size_t>(rows[i]) * C;
      uint16_t* y = h16(dst) + static_cast<size_t>(i) * C;
      if (!scale) {
        std::memcpy(y, x, 2 * static_cast<size_t>(C));
        continue;
      }
      const float s = scale[i];
      for (int c = 0; c < C; ++c) y[c] = bf16_from_float(s * bf16_to_float(x[c]));
    }
  }
  void scatter_add_rows(void* dst, const void* src, const int* rows, const float* scale,
                        float factor, int n, int C) const override {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) {
      const uint16_t* x = h16(src) + static_cast<size_t>(i) * C;
      uint16_t* y = h16(dst) + static_cast<size_t>(rows[i]) * C;
      const float s = scale ? factor * scale[i] : factor;
      for (int c = 0; c < C; ++c)
        y[c] = bf16_from_float(bf16_to_float(y[c]) + s * bf16_to_float(x[c]));
    }
  }
  void row_dots(float* out, const void* a, const void* b, const int* rows, int n,
                int C) const override {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) {
      const uint16_t* x = h16(a) + static_cast<size_t>(rows[i]) * C;
      const uint16_t* y = h16(b) + static_cast<size_t>(i) * C;
      double sum = 0.0;
      for (int c = 0; c < C; ++c)
        sum += static_cast<double>(bf16_to_float(x[c])) * bf16_to_float(y[c]);
      out[i] = static_cast<float>(sum);
    }
  }

  size_t lm_head_scratch_bytes(int chunk, int V) const override {
    return fp32_->lm_head_scratch_bytes(chunk, V);
  }
  double lm_head_cross_entropy(void* dx, float* dweight, const void* x, const void* weight,
                               const int* targets, int N, int C, int V, float grad_scale,
                               void* scratch, int chunk) const override {
    const size_t n = static_cast<size_t>(N) * C;
    float* d = dx ? buffer(3, n) : nullptr;
    const double loss = fp32_->lm_head_cross_entropy(d, dweight, in(0, x, n),
                                                     in(1, weight, static_cast<size_t>(V) * C),
                                                     targets, N, C, V, grad_scale, scratch, chunk);
    if (dx) bf16_store(dx, d, n);
    return loss;
  }
  void cross_entropy_local_max(float* row_max, const void* logits, int n, int Vl,
                               int valid) const override {
    fp32_->cross_entropy_local_max(row_max, in(0, logits, static_cast<size_t>(n) * Vl), n, Vl,
                                   valid);
  }
  void cross_entropy_local_sums(float* sums, const void* logits, const float* row_max,
                                const int* targets, int n, int Vl, int valid,
                                int vocab_begin) const override {
    fp32_->cross_entropy_local_sums(sums, in(0, logits, static_cast<size_t>(n) * Vl), row_max,
                                    targets, n, Vl, valid, vocab_begin);
  }
  double cross_entropy_local_loss(const float* row_max, const float* sums, int n) const override {
    return fp32_->cross_entropy_local_loss(row_max, sums, n);
  }
  void cross_entropy_local_grad(void* logits, const float* row_max, const float* sums,
                                const int* targets, int n, int Vl, int valid, int vocab_begin,
                                float grad_scale) const override {
    const size_t count = static_cast<size_t>(n) * Vl;
    float* x = in(0, logits, count);
    fp32_->cross_entropy_local_grad(x, row_max, sums, targets, n, Vl, valid, vocab_begin,
                                    grad_scale);
    bf16_store(logits, x, count);
  }

 private:
  // Conversion buffer `slot` with room for n floats. They grow to the largest operand in the
  // first step and are reused after (a backend serves one thread: the host or a device stream).
  float* buffer(int slot, size_t n) const {
    std::vector<float>& b = buffers_[slot];
    if (b.size() < n) b.resize(n);
    return b.data();
  }
  // An fp32 copy of n bf16 elements in buffer `slot` (null for null).
  float* in(int slot, const void* p, size_t n) const {
    if (!p) return nullptr;
    float* b = buffer(slot, n);
    bf16_load(b, p, n);
    return b;
  }

  std::unique_ptr<KernelBackend> fp32_ = make_cpu_backend();
  mutable std::vector<float> buffers_[6];
};

}  // namespace

std::unique_ptr<KernelBackend> make_cpu_bf16_backend() {
  return std::make_unique<CpuBf16Backend>();
}

}  // namespace loom::kernels::cpu
