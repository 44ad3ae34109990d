#include <cuda_bf16.h>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_block.h"
#include "kernels/cuda/backend.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/routing.h"
#include "kernels/cuda/vector.h"

namespace loom::kernels::cuda {
namespace {

// The backend for activations of type Act (float or __nv_bfloat16). Const methods queue work on
// one stream; the mutable members (the GEMM heuristics' cache, the scalar result slots) are used
// from the one thread that owns the backend.
template <typename Act>
class CudaBackend : public KernelBackend {
 public:
  explicit CudaBackend(int device)
      : ctx_(context_create(device)),
        scalars_(device_alloc(2 * sizeof(double))),
        reduce_scratch_(device_alloc(vector_reduce_scratch_bytes())) {}
  ~CudaBackend() override { cudaStreamSynchronize(ctx_.stream); }

  const char* name() const override { return kBf16 ? "cuda-bf16" : "cuda"; }
  size_t activation_bytes() const override { return sizeof(Act); }

  // --- memory, in the stream's order ---
  void* allocate(size_t bytes) const override {
    void* p = nullptr;
    if (cudaMallocAsync(&p, bytes, ctx_.stream) != cudaSuccess) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx_.stream));
    return p;
  }
  void deallocate(void* p) const override { cudaFreeAsync(p, ctx_.stream); }
  // Waits for the copy: the host buffer may be pinned, and then an asynchronous copy would
  // still read it after returning.
  void upload(void* dst, const void* src, size_t bytes) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    synchronize();
  }
  void download(void* dst, const void* src, size_t bytes) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    synchronize();
  }
  void copy_bytes(void* dst, const void* src, size_t bytes) const override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  void zero_bytes(void* x, size_t bytes) const override {
    CUDA_CHECK(cudaMemsetAsync(x, 0, bytes, ctx_.stream));
  }
  void synchronize() const override { CUDA_CHECK(cudaStreamSynchronize(ctx_.stream)); }
  bool host_addressable() const override { return false; }
  // GPU memory never becomes the host's: host transports get host buffers only (the
  // communicator sends device buffers over NCCL). What a lend still means: the work so far is done.
  std::shared_ptr<void> lend_to_host() const override {
    synchronize();
    return nullptr;
  }
  bool device_memory(const void* p) const override {
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attributes.type == cudaMemoryTypeDevice;
  }
  void* stream() const override { return ctx_.stream; }
  int device() const override { return ctx_.device; }
  double memory_available() const override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return static_cast<double>(free);
  }
  // The default pool's high-water mark of memory in use (cudaMallocAsync allocates from it).
  double memory_peak() const override {
    cudaMemPool_t pool = nullptr;
    uint64_t high = 0;  // cuuint64_t
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, ctx_.device));
    CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high));
    return static_cast<double>(high);
  }
  // CUB's and cuBLASLt's scratch want 256 bytes (what cudaMalloc returns).
  size_t alignment() const override { return 256; }

  // --- optimizer and statistics ---
  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, long step,
                    float grad_scale) const override {
    cuda::adamw_update(ctx_, params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step,
                       grad_scale);
  }
  double sum_squares(const float* x, size_t n) const override {
    vector_sum_squares(ctx_, result(), x, n, reduce_scratch_.get());
    return read_result();
  }
  void accumulate(float* y, const float* x, size_t n) const override {
    cuda::vector_add<float>(ctx_, y, x, n);
  }
  void to_activation(void* dst, const float* src, size_t n) const override {
    if constexpr (kBf16) {
      vector_convert<Act, float>(ctx_, a(dst), src, n);
    } else {
      copy_bytes(dst, src, n * sizeof(float));
    }
  }
  void from_activation(float* dst, const void* src, size_t n) const override {
    if constexpr (kBf16) {
      vector_convert<float, Act>(ctx_, dst, a(src), n);
    } else {
      copy_bytes(dst, src, n * sizeof(float));
    }
  }

  // --- activations ---
  void copy(void* dst, const void* src, size_t n) const override {
    copy_bytes(dst, src, n * sizeof(Act));
  }
  void zero(void* x, size_t n) const override { zero_bytes(x, n * sizeof(Act)); }
  void copy_rows(void* dst, size_t dst_ld, const void* src, size_t src_ld, size_t rows,
                 size_t cols) const override {
    cuda::copy_rows<Act>(ctx_, a(dst), dst_ld, a(src), src_ld, rows, cols);
  }

  void embedding_forward(void* out, const int* tokens, const void* wte, const void* wpe, int B,
                         int T, int C, int vocab_begin, int vocab_rows) const override {
    cuda::embedding_forward<Act>(ctx_, a(out), tokens, a(wte), a(wpe), B, T, C, vocab_begin,
                                 vocab_rows);
  }
  size_t embedding_backward_scratch_bytes(int B, int T, int C) const override {
    return cuda::embedding_backward_scratch_bytes(B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const void* dout, const int* tokens, int B,
                          int T, int C, int vocab_begin, int vocab_rows,
                          void* scratch) const override {
    cuda::embedding_backward<Act>(ctx_, dwte, dwpe, a(dout), tokens, B, T, C, vocab_begin,
                                  vocab_rows, scratch);
  }

  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C, float eps) const override {
    cuda::layernorm_forward<Act>(ctx_, a(out), mean, rstd, a(inp), a(weight), a(bias), N, C, eps);
  }
  size_t layernorm_backward_scratch_bytes(int N, int C) const override {
    return cuda::layernorm_backward_scratch_bytes(N, C);
  }
  void layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                          const void* inp, const void* weight, const float* mean, const float* rstd,
                          int N, int C, void* scratch) const override {
    cuda::layernorm_backward<Act>(ctx_, a(dinp), dweight, dbias, a(dout), a(inp), a(weight), mean,
                                  rstd, N, C, scratch);
  }
  void rmsnorm_forward(void* out, float* rstd, const void* inp, const void* weight, int N, int C,
                       float eps) const override {
    cuda::rmsnorm_forward<Act>(ctx_, a(out), rstd, a(inp), a(weight), N, C, eps);
  }
  size_t rmsnorm_backward_scratch_bytes(int N, int C) const override {
    return cuda::rmsnorm_backward_scratch_bytes(N, C);
  }
  void rmsnorm_backward(void* dinp, float* dweight, const void* dout, const void* inp,
                        const void* weight, const float* rstd, int N, int C,
                        void* scratch) const override {
    cuda::rmsnorm_backward<Act>(ctx_, a(dinp), dweight, a(dout), a(inp), a(weight), rstd, N, C,
                                scratch);
  }

  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N,
                      int IC, int OC) const override {
    cuda::matmul_forward<Act>(ctx_, a(out), a(inp), a(weight), a(bias), N, IC, OC, &cache_);
  }
  void matmul_backward(void* dinp, float* dweight, float* dbias, const void* dout, const void* inp,
                       const void* weight, int N, int IC, int OC) const override {
    cuda::matmul_backward<Act>(ctx_, a(dinp), dweight, dbias, a(dout), a(inp), a(weight), N, IC, OC,
                               &cache_);
  }

  size_t attention_scratch_bytes(int B, int T, int C, int H) const override {
    return cuda::attention_scratch_bytes(B, T, C, H);
  }
  void attention_forward(void* out, float* lse, const void* qkv, int B, int T, int C, int H,
                         int kv_heads, void* scratch) const override {
    cuda::attention_forward<Act>(ctx_, a(out), lse, a(qkv), B, T, C, H, kv_heads, scratch);
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int B, int T, int C, int H, int kv_heads,
                          void* scratch) const override {
    cuda::attention_backward<Act>(ctx_, a(dqkv), a(dout), a(qkv), a(out), lse, B, T, C, H, kv_heads,
                                  scratch);
  }

  size_t attention_block_scratch_bytes(int B, int H, int q_len, int) const override {
    return cuda::attention_block_scratch_bytes(B, H, q_len);
  }
  void attention_block_forward(void* out, float* lse, const void* q, const void* kv,
                               const AttentionBlock& blk, void* scratch) const override {
    cuda::attention_block_forward<Act>(ctx_, a(out), lse, a(q), a(kv), blk, scratch);
  }
  void attention_merge(void* out, float* lse, const void* block_out, const float* block_lse,
                       const AttentionBlock& blk) const override {
    cuda::attention_merge<Act>(ctx_, a(out), lse, a(block_out), block_lse, blk);
  }
  void attention_block_backward(void* dq, void* dkv, const void* dout, const void* q,
                                const void* kv, const void* out, const float* lse,
                                const AttentionBlock& blk, void* scratch) const override {
    cuda::attention_block_backward<Act>(ctx_, a(dq), a(dkv), a(dout), a(q), a(kv), a(out), lse, blk,
                                        scratch);
  }

  void rope_table(float* cos, float* sin, int T, int hd, float theta,
                  int first_position) const override {
    cuda::rope_table(ctx_, cos, sin, T, hd, theta, first_position);
  }
  void rope_apply(void* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                  int kv_heads, bool inverse) const override {
    cuda::rope_apply<Act>(ctx_, a(qkv), cos, sin, B, T, C, H, kv_heads, inverse);
  }

  void gelu_forward(void* out, const void* inp, size_t n) const override {
    cuda::gelu_forward<Act>(ctx_, a(out), a(inp), n);
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) const override {
    cuda::gelu_backward<Act>(ctx_, a(dinp), a(inp), a(dout), n);
  }
  void swiglu_forward(void* out, const void* inp, int N, int F) const override {
    cuda::swiglu_forward<Act>(ctx_, a(out), a(inp), N, F);
  }
  void swiglu_backward(void* dinp, const void* inp, const void* dout, int N, int F) const override {
    cuda::swiglu_backward<Act>(ctx_, a(dinp), a(inp), a(dout), N, F);
  }
  void vector_add(void* y, const void* x, size_t n) const override {
    cuda::vector_add<Act>(ctx_, a(y), a(x), n);
  }
  void vector_sum(void* y, const void* p, const void* q, size_t n) const override {
    cuda::vector_sum<Act>(ctx_, a(y), a(p), a(q), n);
  }

  void gather_rows(void* dst, const void* src, const int* rows, const float* scale, int n,
                   int C) const override {
    cuda::gather_rows<Act>(ctx_, a(dst), a(src), rows, scale, n, C);
  }
  void scatter_add_rows(void* dst, const void* src, const int* rows, const float* scale,
                        float factor, int n, int C) const override {
    cuda::scatter_add_rows<Act>(ctx_, a(dst), a(src), rows, scale, factor, n, C);
  }
  void row_dots(float* out, const void* p, const void* q, const int* rows, int n,
                int C) const override {
    cuda::row_dots<Act>(ctx_, out, a(p), a(q), rows, n, C);
  }

  size_t lm_head_scratch_bytes(int chunk, int V) const override {
    return cuda::lm_head_scratch_bytes(chunk, V);
  }
  double lm_head_cross_entropy(void* dx, float* dweight, const void* x, const void* weight,
                               const int* targets, int N, int C, int V, float grad_scale,
                               void* scratch, int chunk) const override {
    cuda::lm_head_cross_entropy<Act>(ctx_, result(), a(dx), dweight, a(x), a(weight), targets, N, C,
                                     V, grad_scale, scratch, chunk, &cache_);
    return read_result();
  }

  void cross_entropy_local_max(float* row_max, const void* logits, int n, int Vl,
                               int valid) const override {
    cuda::cross_entropy_local_max<Act>(ctx_, row_max, a(logits), n, Vl, valid);
  }
  void cross_entropy_local_sums(float* sums, const void* logits, const float* row_max,
                                const int* targets, int n, int Vl, int valid,
                                int vocab_begin) const override {
    cuda::cross_entropy_local_sums<Act>(ctx_, sums, a(logits), row_max, targets, n, Vl, valid,
                                        vocab_begin);
  }
  double cross_entropy_local_loss(const float* row_max, const float* sums, int n) const override {
    cuda::cross_entropy_local_loss(ctx_, result(), row_max, sums, n);
    return read_result();
  }
  void cross_entropy_local_grad(void* logits, const float* row_max, const float* sums,
                                const int* targets, int n, int Vl, int valid, int vocab_begin,
                                float grad_scale) const override {
    cuda::cross_entropy_local_grad<Act>(ctx_, a(logits), row_max, sums, targets, n, Vl, valid,
                                        vocab_begin, grad_scale);
  }

 private:
  static constexpr bool kBf16 = sizeof(Act) == 2;
  static Act* a(void* p) { return static_cast<Act*>(p); }
  static const Act* a(const void* p) { return static_cast<const Act*>(p); }
  double* result() const { return static_cast<double*>(scalars_.get()); }
  double read_result() const {
    double value = 0;
    download(&value, result(), sizeof value);
    return value;
  }

  Context ctx_;
  DeviceMemory scalars_;         // the device double a reduction writes before it is read back
  DeviceMemory reduce_scratch_;  // vector_sum_squares' partials
  mutable MatmulCache cache_;
};

}  // namespace

std::unique_ptr<KernelBackend> make_cuda_backend(int device, bool bf16) {
  if (bf16) return std::make_unique<CudaBackend<__nv_bfloat16>>(device);
  return std::make_unique<CudaBackend<float>>(device);
}

int cuda_devices() { return device_count(); }

}  // namespace loom::kernels::cuda
