// CUDA attention_forward/backward against the CPU kernel on the same inputs (rounded to bf16 for
// the bf16 path): T = 1 and T not a multiple of the tiles, H = 3, head dims 10 (padded to 16), 16,
// 32, 40 (padded to 64), 64 and 128; grouped-query attention (kv_heads < H); outputs poisoned
// with NaN first; bitwise determinism of repeated calls; the head-dim limit.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/threads.h"
#include "kernels/cuda/attention.h"

namespace loom::kernels::cuda_test {
namespace {

struct Shape {
  int B, T, C, H;
  int KV = 0;  // key/value heads (grouped-query attention); 0: H
};

int kv(const Shape& s) { return s.KV > 0 ? s.KV : s.H; }

std::string describe(const Shape& s) {
  return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
         " H=" + std::to_string(s.H) + " kv_heads=" + std::to_string(kv(s)) +
         " hd=" + std::to_string(s.C / s.H);
}

const std::vector<Shape> kShapes = {
    {1, 1, 16, 1},      // one token, hd 16
    {2, 65, 48, 3},     // H = 3, T one past a multiple of the tiles, hd 16
    {1, 20, 30, 3},     // hd 10: padded head dims
    {2, 17, 96, 3},     // hd 32
    {1, 47, 120, 3},    // hd 40
    {1, 33, 128, 2},    // hd 64
    {2, 65, 256, 2},    // hd 128
    {1, 130, 128, 1},   // hd 128, several key tiles per query block and query tiles per key block
    {2, 65, 64, 4, 2},  // grouped-query: 4 query heads over 2 key/value heads, hd 16
    {1, 70, 256, 4, 1}  // one key/value head for 4 query heads, hd 64
};

size_t qkv_size(const Shape& s) {
  return static_cast<size_t>(s.B) * s.T * (s.C + 2 * kv(s) * (s.C / s.H));
}
size_t out_size(const Shape& s) { return static_cast<size_t>(s.B) * s.T * s.C; }
size_t lse_size(const Shape& s) { return static_cast<size_t>(s.B) * s.H * s.T; }

struct CpuForward {
  std::vector<float> out, lse;
};

CpuForward cpu_forward(const std::vector<float>& qkv, const Shape& s) {
  CpuForward f{std::vector<float>(out_size(s)), std::vector<float>(lse_size(s))};
  std::vector<float> scratch(cpu::attention_scratch_floats(s.T, cpu::thread_count()));
  cpu::attention_forward(f.out.data(), f.lse.data(), qkv.data(), s.B, s.T, s.C, s.H, kv(s),
                         scratch.data());
  return f;
}

std::vector<float> cpu_backward(const std::vector<float>& dout, const std::vector<float>& qkv,
                                const std::vector<float>& out, const std::vector<float>& lse,
                                const Shape& s) {
  std::vector<float> dqkv(qkv_size(s));
  std::vector<float> scratch(cpu::attention_scratch_floats(s.T, cpu::thread_count()));
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                          s.C, s.H, kv(s), scratch.data());
  return dqkv;
}

template <typename T>
using AttentionTest = CudaKernelTypedTest<T>;
TYPED_TEST_SUITE(AttentionTest, ActivationTypes);

TYPED_TEST(AttentionTest, ForwardMatchesCpu) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    std::mt19937 rng(11);
    const std::vector<float> qkv_host = as_type<T>(random_floats(rng, qkv_size(s), -2.0f, 2.0f));
    const CpuForward want = cpu_forward(qkv_host, s);

    DeviceBuffer<T> qkv(this->ctx, qkv_host);
    DeviceBuffer<T> out(this->ctx, out_size(s));
    DeviceBuffer<float> lse(this->ctx, lse_size(s));
    out.poison();
    lse.poison();
    cuda::attention_forward<T>(this->ctx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H,
                               kv(s), nullptr);
    EXPECT_TRUE(norm_close(out.download(), want.out, tolerance<T>()));
    // Inputs are identical on both sides, so lse differs by fp32 rounding only, for bf16 too.
    EXPECT_TRUE(norm_close(lse.download(), want.lse, 1e-5));
  }
}

TYPED_TEST(AttentionTest, BackwardMatchesCpu) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    std::mt19937 rng(12);
    const std::vector<float> qkv_host = as_type<T>(random_floats(rng, qkv_size(s), -2.0f, 2.0f));
    const std::vector<float> dout_host = as_type<T>(random_floats(rng, out_size(s)));
    // Both backward passes start from the CPU forward's out (as T) and lse.
    const CpuForward forward = cpu_forward(qkv_host, s);
    const std::vector<float> out_host = as_type<T>(forward.out);
    const std::vector<float> want = cpu_backward(dout_host, qkv_host, out_host, forward.lse, s);

    DeviceBuffer<T> qkv(this->ctx, qkv_host), dout(this->ctx, dout_host), out(this->ctx, out_host);
    DeviceBuffer<float> lse(this->ctx, forward.lse);
    DeviceBuffer<unsigned char> scratch(this->ctx,
                                        cuda::attention_scratch_bytes(s.B, s.T, s.C, s.H));
    DeviceBuffer<T> dqkv(this->ctx, qkv_size(s));
    scratch.poison();
    dqkv.poison();
    cuda::attention_backward<T>(this->ctx, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                lse.data(), s.B, s.T, s.C, s.H, kv(s), scratch.data());
    EXPECT_TRUE(norm_close(dqkv.download(), want, tolerance<T>()));
  }
}

// Forward then backward on the GPU alone, twice: the same bits each time.
TYPED_TEST(AttentionTest, IsDeterministic) {
  using T = TypeParam;
  const Shape s{2, 130, 192, 3};  // hd 64
  std::mt19937 rng(13);
  DeviceBuffer<T> qkv(this->ctx, random_floats(rng, qkv_size(s), -2.0f, 2.0f));
  DeviceBuffer<T> dout(this->ctx, random_floats(rng, out_size(s)));
  DeviceBuffer<unsigned char> scratch(this->ctx, cuda::attention_scratch_bytes(s.B, s.T, s.C, s.H));
  std::vector<std::vector<unsigned char>> outs, lses, dqkvs;
  for (int run = 0; run < 2; run++) {
    DeviceBuffer<T> out(this->ctx, out_size(s)), dqkv(this->ctx, qkv_size(s));
    DeviceBuffer<float> lse(this->ctx, lse_size(s));
    out.poison();
    lse.poison();
    dqkv.poison();
    cuda::attention_forward<T>(this->ctx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H,
                               kv(s), nullptr);
    cuda::attention_backward<T>(this->ctx, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                lse.data(), s.B, s.T, s.C, s.H, kv(s), scratch.data());
    outs.push_back(out.download_bytes());
    lses.push_back(lse.download_bytes());
    dqkvs.push_back(dqkv.download_bytes());
    EXPECT_TRUE(all_finite(dqkv.download()));
  }
  EXPECT_TRUE(bitwise_equal(outs[0], outs[1]));
  EXPECT_TRUE(bitwise_equal(lses[0], lses[1]));
  EXPECT_TRUE(bitwise_equal(dqkvs[0], dqkvs[1]));
}

TYPED_TEST(AttentionTest, RejectsHeadDimAbove128) {
  using T = TypeParam;
  EXPECT_THROW(
      cuda::attention_forward<T>(this->ctx, nullptr, nullptr, nullptr, 1, 4, 264, 2, 2, nullptr),
      std::invalid_argument);
  EXPECT_THROW(cuda::attention_backward<T>(this->ctx, nullptr, nullptr, nullptr, nullptr, nullptr,
                                           1, 4, 129, 1, 1, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace loom::kernels::cuda_test
