#include "kernels/cpu/backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/routing.h"
#include "kernels/cpu/threads.h"
#include "kernels/cpu/vector.h"

namespace loom::kernels::cpu {
namespace {

// Activations are fp32 on the CPU: the void pointers of the interface are float pointers.
float* f(void* p) { return static_cast<float*>(p); }
const float* f(const void* p) { return static_cast<const float*>(p); }

class CpuBackend : public KernelBackend {
 public:
  const char* name() const override { return "cpu"; }
  size_t activation_bytes() const override { return sizeof(float); }

  // Host memory: the kernels run synchronously, so there is nothing to wait for or lend.
  void* allocate(size_t bytes) const override { return allocate_host(bytes); }
  void deallocate(void* p) const override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) const override {
    std::memcpy(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) const override {
    std::memcpy(dst, src, bytes);
  }
  void copy_bytes(void* dst, const void* src, size_t bytes) const override {
    std::memcpy(dst, src, bytes);
  }
  void zero_bytes(void* x, size_t bytes) const override { std::memset(x, 0, bytes); }
  void synchronize() const override {}
  bool host_addressable() const override { return true; }
  std::shared_ptr<void> lend_to_host() const override { return nullptr; }

  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, long step,
                    float grad_scale) const override {
    cpu::adamw_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step,
                      grad_scale);
  }
  double sum_squares(const float* x, size_t n) const override {
    return cpu::vector_sum_squares(x, n);
  }
  void accumulate(float* y, const float* x, size_t n) const override { cpu::vector_add(y, x, n); }
  void to_activation(void* dst, const float* src, size_t n) const override {
    std::memcpy(dst, src, n * sizeof(float));
  }
  void from_activation(float* dst, const void* src, size_t n) const override {
    std::memcpy(dst, src, n * sizeof(float));
  }

  void copy(void* dst, const void* src, size_t n) const override {
    std::memcpy(dst, src, n * sizeof(float));
  }
  void zero(void* x, size_t n) const override { std::memset(x, 0, n * sizeof(float)); }
  void copy_rows(void* dst, size_t dst_ld, const void* src, size_t src_ld, size_t rows,
                 size_t cols) const override {
    for (size_t r = 0; r < rows; ++r)
      std::memcpy(f(dst) + r * dst_ld, f(src) + r * src_ld, cols * sizeof(float));
  }

  void embedding_forward(void* out, const int* tokens, const void* wte, const void* wpe, int B,
                         int T, int C, int vocab_begin, int vocab_rows) const override {
    cpu::embedding_forward(f(out), tokens, f(wte), f(wpe), B, T, C, vocab_begin, vocab_rows);
  }
  size_t embedding_backward_scratch_bytes(int, int, int) const override { return 0; }
  void embedding_backward(float* dwte, float* dwpe, const void* dout, const int* tokens, int B,
                          int T, int C, int vocab_begin, int vocab_rows, void*) const override {
    cpu::embedding_backward(dwte, dwpe, f(dout), tokens, B, T, C, vocab_begin, vocab_rows);
  }

  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C, float eps) const override {
    cpu::layernorm_forward(f(out), mean, rstd, f(inp), f(weight), f(bias), N, C, eps);
  }
  size_t layernorm_backward_scratch_bytes(int, int) const override { return 0; }
  void layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                          const void* inp, const void* weight, const float* mean, const float* rstd,
                          int N, int C, void*) const override {
    cpu::layernorm_backward(f(dinp), dweight, dbias, f(dout), f(inp), f(weight), mean, rstd, N, C);
  }
  void rmsnorm_forward(void* out, float* rstd, const void* inp, const void* weight, int N, int C,
                       float eps) const override {
    cpu::rmsnorm_forward(f(out), rstd, f(inp), f(weight), N, C, eps);
  }
  size_t rmsnorm_backward_scratch_bytes(int, int) const override { return 0; }
  void rmsnorm_backward(void* dinp, float* dweight, const void* dout, const void* inp,
                        const void* weight, const float* rstd, int N, int C, void*) const override {
    cpu::rmsnorm_backward(f(dinp), dweight, f(dout), f(inp), f(weight), rstd, N, C);
  }

  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N,
                      int IC, int OC) const override {
    cpu::matmul_forward(f(out), f(inp), f(weight), f(bias), N, IC, OC);
  }
  void matmul_backward(void* dinp, float* dweight, float* dbias, const void* dout, const void* inp,
                       const void* weight, int N, int IC, int OC) const override {
    cpu::matmul_backward(f(dinp), dweight, dbias, f(dout), f(inp), f(weight), N, IC, OC);
  }

  // Per-thread scratch: sized for the thread count in effect now.
  size_t attention_scratch_bytes(int, int T, int, int) const override {
    return attention_scratch_floats(T, thread_count()) * sizeof(float);
  }
  void attention_forward(void* out, float* lse, const void* qkv, int B, int T, int C, int H,
                         int kv_heads, void* scratch) const override {
    cpu::attention_forward(f(out), lse, f(qkv), B, T, C, H, kv_heads, f(scratch));
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int B, int T, int C, int H, int kv_heads,
                          void* scratch) const override {
    cpu::attention_backward(f(dqkv), f(dout), f(qkv), f(out), lse, B, T, C, H, kv_heads,
                            f(scratch));
  }

  // Per-thread score buffers; B, H and q_len do not matter on the CPU.
  size_t attention_block_scratch_bytes(int, int, int, int kv_rows) const override {
    return attention_block_scratch_floats(kv_rows, thread_count()) * sizeof(float);
  }
  void attention_block_forward(void* out, float* lse, const void* q, const void* kv,
                               const AttentionBlock& blk, void* scratch) const override {
    cpu::attention_block_forward(f(out), lse, f(q), f(kv), blk, f(scratch));
  }
  void attention_merge(void* out, float* lse, const void* block_out, const float* block_lse,
                       const AttentionBlock& blk) const override {
    cpu::attention_merge(f(out), lse, f(block_out), block_lse, blk);
  }
  void attention_block_backward(void* dq, void* dkv, const void* dout, const void* q,
                                const void* kv, const void* out, const float* lse,
                                const AttentionBlock& blk, void* scratch) const override {
    cpu::attention_block_backward(f(dq), f(dkv), f(dout), f(q), f(kv), f(out), lse, blk,
                                  f(scratch));
  }

  void rope_table(float* cos, float* sin, int T, int hd, float theta,
                  int first_position) const override {
    cpu::rope_table(cos, sin, T, hd, theta, first_position);
  }
  void rope_apply(void* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                  int kv_heads, bool inverse) const override {
    cpu::rope_apply(f(qkv), cos, sin, B, T, C, H, kv_heads, inverse);
  }

  void gelu_forward(void* out, const void* inp, size_t n) const override {
    cpu::gelu_forward(f(out), f(inp), n);
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) const override {
    cpu::gelu_backward(f(dinp), f(inp), f(dout), n);
  }
  void swiglu_forward(void* out, const void* inp, int N, int F) const override {
    cpu::swiglu_forward(f(out), f(inp), N, F);
  }
  void swiglu_backward(void* dinp, const void* inp, const void* dout, int N, int F) const override {
    cpu::swiglu_backward(f(dinp), f(inp), f(dout), N, F);
  }
  void vector_add(void* y, const void* x, size_t n) const override {
    cpu::vector_add(f(y), f(x), n);
  }
  void vector_sum(void* y, const void* a, const void* b, size_t n) const override {
    cpu::vector_sum(f(y), f(a), f(b), n);
  }

  void gather_rows(void* dst, const void* src, const int* rows, const float* scale, int n,
                   int C) const override {
    cpu::gather_rows(f(dst), f(src), rows, scale, n, C);
  }
  void scatter_add_rows(void* dst, const void* src, const int* rows, const float* scale,
                        float factor, int n, int C) const override {
    cpu::scatter_add_rows(f(dst), f(src), rows, scale, factor, n, C);
  }
  void row_dots(float* out, const void* a, const void* b, const int* rows, int n,
                int C) const override {
    cpu::row_dots(out, f(a), f(b), rows, n, C);
  }

  size_t lm_head_scratch_bytes(int chunk, int V) const override {
    return lm_head_scratch_floats(chunk, V) * sizeof(float);
  }
  double lm_head_cross_entropy(void* dx, float* dweight, const void* x, const void* weight,
                               const int* targets, int N, int C, int V, float grad_scale,
                               void* scratch, int chunk) const override {
    return cpu::lm_head_cross_entropy(f(dx), dweight, f(x), f(weight), targets, N, C, V, grad_scale,
                                      f(scratch), chunk);
  }
  void cross_entropy_local_max(float* row_max, const void* logits, int n, int Vl,
                               int valid) const override {
    cpu::cross_entropy_local_max(row_max, f(logits), n, Vl, valid);
  }
  void cross_entropy_local_sums(float* sums, const void* logits, const float* row_max,
                                const int* targets, int n, int Vl, int valid,
                                int vocab_begin) const override {
    cpu::cross_entropy_local_sums(sums, f(logits), row_max, targets, n, Vl, valid, vocab_begin);
  }
  double cross_entropy_local_loss(const float* row_max, const float* sums, int n) const override {
    return cpu::cross_entropy_local_loss(row_max, sums, n);
  }
  void cross_entropy_local_grad(void* logits, const float* row_max, const float* sums,
                                const int* targets, int n, int Vl, int valid, int vocab_begin,
                                float grad_scale) const override {
    cpu::cross_entropy_local_grad(f(logits), row_max, sums, targets, n, Vl, valid, vocab_begin,
                                  grad_scale);
  }
};

}  // namespace

void* allocate_host(size_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return p;
}

std::unique_ptr<KernelBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace loom::kernels::cpu
