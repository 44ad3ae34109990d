#include "kernels/emulated/backend.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "base/error.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/threads.h"

#if defined(__SANITIZE_ADDRESS__)
#define LOOM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOOM_ASAN 1
#endif
#endif
#ifdef LOOM_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace loom::kernels::emulated {
namespace {

// The device: its allocations and its stream (one worker thread running tasks in issue order).
// The memory is open to the host (unpoisoned) while the stream has work or a transport holds a
// lend; closed (poisoned) otherwise.
class Device {
 public:
  Device() : worker_([this] { work(); }) {}
  ~Device() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    worker_.join();
    for (auto& [p, bytes] : allocations_) set_poisoned(p, bytes, false);
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  void* allocate(size_t bytes) {
    void* p = cpu::allocate_host(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    allocations_[p] = bytes;
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
    if (!open_) set_poisoned(p, bytes, true);
    return p;
  }
  // As cudaFree: waits until no queued work can still use it.
  void deallocate(void* p) {
    synchronize();
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = allocations_.find(p);
      LOOM_CHECK(it != allocations_.end());  // memory of this device
      set_poisoned(p, it->second, false);
      in_use_ -= it->second;
      allocations_.erase(it);
    }
    std::free(p);
  }

  double peak() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<double>(peak_);
  }

  void enqueue(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
      update_poison();
    }
    wake_.notify_all();
  }
  void synchronize() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_.wait(lock, [this] { return queue_.empty() && !running_; });
  }
  // Runs `task` on the stream and waits for it.
  void run(std::function<void()> task) {
    enqueue(std::move(task));
    synchronize();
  }

  void lend() {
    synchronize();
    std::lock_guard<std::mutex> lock(mu_);
    ++lent_;
    update_poison();
  }
  void unlend() {
    std::lock_guard<std::mutex> lock(mu_);
    --lent_;
    update_poison();
  }

 private:
  void work() {
    int threads = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      lock.unlock();
      // The CPU kernels size per-thread scratch by cpu::thread_count(): this thread's OpenMP
      // team must have that size (and flush denormals as the host's does).
      if (threads != cpu::thread_count()) {
        cpu::adopt_thread_settings();
        threads = cpu::thread_count();
      }
      task();
      lock.lock();
      running_ = false;
      update_poison();
      if (queue_.empty()) idle_.notify_all();
    }
  }

  // Under mu_.
  void update_poison() {
    const bool open = running_ || !queue_.empty() || lent_ > 0;
    if (open == open_) return;
    open_ = open;
    for (auto& [p, bytes] : allocations_) set_poisoned(p, bytes, !open);
  }
  static void set_poisoned(void* p, size_t bytes, bool poisoned) {
#ifdef LOOM_ASAN
    if (poisoned)
      ASAN_POISON_MEMORY_REGION(p, bytes);
    else
      ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
    (void)p, (void)bytes, (void)poisoned;
#endif
  }

  std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::deque<std::function<void()>> queue_;
  bool running_ = false, stop_ = false, open_ = false;
  int lent_ = 0;
  std::map<void*, size_t> allocations_;
  size_t in_use_ = 0, peak_ = 0;  // bytes allocated now, and at most so far
  std::thread worker_;            // last: starts once the rest is built
};

// Every kernel is the CPU backend's, queued on the device's stream; arguments are captured by
// value (a GPU launch copies them too), so the caller's locals may go out of scope.
class EmulatedBackend final : public KernelBackend {
 public:
  explicit EmulatedBackend(std::shared_ptr<const KernelBackend> inner)
      : cpu_(std::move(inner)),
        name_(std::string("emulated ") + cpu_->name()),
        device_(std::make_shared<Device>()) {}

  const char* name() const override { return name_.c_str(); }
  size_t activation_bytes() const override { return cpu_->activation_bytes(); }

  void* allocate(size_t bytes) const override { return device_->allocate(bytes); }
  void deallocate(void* p) const override { device_->deallocate(p); }
  double memory_peak() const override { return device_->peak(); }
  void upload(void* dst, const void* src, size_t bytes) const override {
    device_->run([=, this] { cpu_->upload(dst, src, bytes); });
  }
  void download(void* dst, const void* src, size_t bytes) const override {
    device_->run([=, this] { cpu_->download(dst, src, bytes); });
  }
  void copy_bytes(void* dst, const void* src, size_t bytes) const override {
    queue([=](const KernelBackend& k) { k.copy_bytes(dst, src, bytes); });
  }
  void zero_bytes(void* x, size_t bytes) const override {
    queue([=](const KernelBackend& k) { k.zero_bytes(x, bytes); });
  }
  void synchronize() const override { device_->synchronize(); }
  bool host_addressable() const override { return false; }
  std::shared_ptr<void> lend_to_host() const override {
    device_->lend();
    std::shared_ptr<Device> device = device_;
    return std::shared_ptr<void>(device.get(), [device](void*) { device->unlend(); });
  }

  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                    float beta1, float beta2, float eps, float weight_decay, long step,
                    float grad_scale) const override {
    queue([=](const KernelBackend& k) {
      k.adamw_update(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step, grad_scale);
    });
  }
  double sum_squares(const float* x, size_t n) const override {
    double out = 0.0;
    device_->run([&] { out = cpu_->sum_squares(x, n); });
    return out;
  }
  void accumulate(float* y, const float* x, size_t n) const override {
    queue([=](const KernelBackend& k) { k.accumulate(y, x, n); });
  }

  void to_activation(void* dst, const float* src, size_t n) const override {
    queue([=](const KernelBackend& k) { k.to_activation(dst, src, n); });
  }
  void from_activation(float* dst, const void* src, size_t n) const override {
    queue([=](const KernelBackend& k) { k.from_activation(dst, src, n); });
  }

  void copy(void* dst, const void* src, size_t n) const override {
    queue([=](const KernelBackend& k) { k.copy(dst, src, n); });
  }
  void zero(void* x, size_t n) const override {
    queue([=](const KernelBackend& k) { k.zero(x, n); });
  }
  void copy_rows(void* dst, size_t dst_ld, const void* src, size_t src_ld, size_t rows,
                 size_t cols) const override {
    queue([=](const KernelBackend& k) { k.copy_rows(dst, dst_ld, src, src_ld, rows, cols); });
  }

  void embedding_forward(void* out, const int* tokens, const void* wte, const void* wpe, int B,
                         int T, int C, int vocab_begin, int vocab_rows) const override {
    queue([=](const KernelBackend& k) {
      k.embedding_forward(out, tokens, wte, wpe, B, T, C, vocab_begin, vocab_rows);
    });
  }
  size_t embedding_backward_scratch_bytes(int B, int T, int C) const override {
    return cpu_->embedding_backward_scratch_bytes(B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const void* dout, const int* tokens, int B,
                          int T, int C, int vocab_begin, int vocab_rows,
                          void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.embedding_backward(dwte, dwpe, dout, tokens, B, T, C, vocab_begin, vocab_rows, scratch);
    });
  }

  void layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                         const void* bias, int N, int C, float eps) const override {
    queue([=](const KernelBackend& k) {
      k.layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
    });
  }
  size_t layernorm_backward_scratch_bytes(int N, int C) const override {
    return cpu_->layernorm_backward_scratch_bytes(N, C);
  }
  void layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                          const void* inp, const void* weight, const float* mean, const float* rstd,
                          int N, int C, void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, scratch);
    });
  }
  void rmsnorm_forward(void* out, float* rstd, const void* inp, const void* weight, int N, int C,
                       float eps) const override {
    queue([=](const KernelBackend& k) { k.rmsnorm_forward(out, rstd, inp, weight, N, C, eps); });
  }
  size_t rmsnorm_backward_scratch_bytes(int N, int C) const override {
    return cpu_->rmsnorm_backward_scratch_bytes(N, C);
  }
  void rmsnorm_backward(void* dinp, float* dweight, const void* dout, const void* inp,
                        const void* weight, const float* rstd, int N, int C,
                        void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C, scratch);
    });
  }

  void matmul_forward(void* out, const void* inp, const void* weight, const void* bias, int N,
                      int IC, int OC) const override {
    queue([=](const KernelBackend& k) { k.matmul_forward(out, inp, weight, bias, N, IC, OC); });
  }
  void matmul_backward(void* dinp, float* dweight, float* dbias, const void* dout, const void* inp,
                       const void* weight, int N, int IC, int OC) const override {
    queue([=](const KernelBackend& k) {
      k.matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
    });
  }

  size_t attention_scratch_bytes(int B, int T, int C, int H) const override {
    return cpu_->attention_scratch_bytes(B, T, C, H);
  }
  void attention_forward(void* out, float* lse, const void* qkv, int B, int T, int C, int H,
                         int kv_heads, void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.attention_forward(out, lse, qkv, B, T, C, H, kv_heads, scratch);
    });
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                          const float* lse, int B, int T, int C, int H, int kv_heads,
                          void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.attention_backward(dqkv, dout, qkv, out, lse, B, T, C, H, kv_heads, scratch);
    });
  }

  size_t attention_block_scratch_bytes(int B, int H, int q_len, int kv_rows) const override {
    return cpu_->attention_block_scratch_bytes(B, H, q_len, kv_rows);
  }
  void attention_block_forward(void* out, float* lse, const void* q, const void* kv,
                               const AttentionBlock& blk, void* scratch) const override {
    queue(
        [=](const KernelBackend& k) { k.attention_block_forward(out, lse, q, kv, blk, scratch); });
  }
  void attention_merge(void* out, float* lse, const void* block_out, const float* block_lse,
                       const AttentionBlock& blk) const override {
    queue([=](const KernelBackend& k) { k.attention_merge(out, lse, block_out, block_lse, blk); });
  }
  void attention_block_backward(void* dq, void* dkv, const void* dout, const void* q,
                                const void* kv, const void* out, const float* lse,
                                const AttentionBlock& blk, void* scratch) const override {
    queue([=](const KernelBackend& k) {
      k.attention_block_backward(dq, dkv, dout, q, kv, out, lse, blk, scratch);
    });
  }

  void rope_table(float* cos, float* sin, int T, int hd, float theta,
                  int first_position) const override {
    queue([=](const KernelBackend& k) { k.rope_table(cos, sin, T, hd, theta, first_position); });
  }
  void rope_apply(void* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                  int kv_heads, bool inverse) const override {
    queue([=](const KernelBackend& k) {
      k.rope_apply(qkv, cos, sin, B, T, C, H, kv_heads, inverse);
    });
  }

  void gelu_forward(void* out, const void* inp, size_t n) const override {
    queue([=](const KernelBackend& k) { k.gelu_forward(out, inp, n); });
  }
  void gelu_backward(void* dinp, const void* inp, const void* dout, size_t n) const override {
    queue([=](const KernelBackend& k) { k.gelu_backward(dinp, inp, dout, n); });
  }
  void swiglu_forward(void* out, const void* inp, int N, int F) const override {
    queue([=](const KernelBackend& k) { k.swiglu_forward(out, inp, N, F); });
  }
  void swiglu_backward(void* dinp, const void* inp, const void* dout, int N, int F) const override {
    queue([=](const KernelBackend& k) { k.swiglu_backward(dinp, inp, dout, N, F); });
  }
  void vector_add(void* y, const void* x, size_t n) const override {
    queue([=](const KernelBackend& k) { k.vector_add(y, x, n); });
  }
  void vector_sum(void* y, const void* a, const void* b, size_t n) const override {
    queue([=](const KernelBackend& k) { k.vector_sum(y, a, b, n); });
  }

  void gather_rows(void* dst, const void* src, const int* rows, const float* scale, int n,
                   int C) const override {
    queue([=](const KernelBackend& k) { k.gather_rows(dst, src, rows, scale, n, C); });
  }
  void scatter_add_rows(void* dst, const void* src, const int* rows, const float* scale,
                        float factor, int n, int C) const override {
    queue([=](const KernelBackend& k) { k.scatter_add_rows(dst, src, rows, scale, factor, n, C); });
  }
  void row_dots(float* out, const void* a, const void* b, const int* rows, int n,
                int C) const override {
    queue([=](const KernelBackend& k) { k.row_dots(out, a, b, rows, n, C); });
  }

  size_t lm_head_scratch_bytes(int chunk, int V) const override {
    return cpu_->lm_head_scratch_bytes(chunk, V);
  }
  double lm_head_cross_entropy(void* dx, float* dweight, const void* x, const void* weight,
                               const int* targets, int N, int C, int V, float grad_scale,
                               void* scratch, int chunk) const override {
    double loss = 0.0;
    device_->run([&] {
      loss = cpu_->lm_head_cross_entropy(dx, dweight, x, weight, targets, N, C, V, grad_scale,
                                         scratch, chunk);
    });
    return loss;
  }
  void cross_entropy_local_max(float* row_max, const void* logits, int n, int Vl,
                               int valid) const override {
    queue(
        [=](const KernelBackend& k) { k.cross_entropy_local_max(row_max, logits, n, Vl, valid); });
  }
  void cross_entropy_local_sums(float* sums, const void* logits, const float* row_max,
                                const int* targets, int n, int Vl, int valid,
                                int vocab_begin) const override {
    queue([=](const KernelBackend& k) {
      k.cross_entropy_local_sums(sums, logits, row_max, targets, n, Vl, valid, vocab_begin);
    });
  }
  double cross_entropy_local_loss(const float* row_max, const float* sums, int n) const override {
    double loss = 0.0;
    device_->run([&] { loss = cpu_->cross_entropy_local_loss(row_max, sums, n); });
    return loss;
  }
  void cross_entropy_local_grad(void* logits, const float* row_max, const float* sums,
                                const int* targets, int n, int Vl, int valid, int vocab_begin,
                                float grad_scale) const override {
    queue([=](const KernelBackend& k) {
      k.cross_entropy_local_grad(logits, row_max, sums, targets, n, Vl, valid, vocab_begin,
                                 grad_scale);
    });
  }

 private:
  template <class Kernel>
  void queue(Kernel kernel) const {
    const KernelBackend* cpu = cpu_.get();
    device_->enqueue([cpu, kernel] { kernel(*cpu); });
  }

  std::shared_ptr<const KernelBackend> cpu_;
  std::string name_;
  std::shared_ptr<Device> device_;
};

}  // namespace

std::shared_ptr<KernelBackend> make_emulated_backend(std::shared_ptr<const KernelBackend> cpu) {
  return std::make_shared<EmulatedBackend>(cpu ? std::move(cpu) : cpu::make_cpu_backend());
}

bool poisons_memory() {
#ifdef LOOM_ASAN
  return true;
#else
  return false;
#endif
}

}  // namespace loom::kernels::emulated
