// GELU, the vector helpers and AdamW on the GPU against the CPU kernels on the same inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/vector.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/vector.h"

namespace loom::kernels::cuda_test {
namespace {

namespace cpu = loom::kernels::cpu;
namespace gpu = loom::kernels::cuda;

// Lengths around the vector widths (4 floats, 8 bf16) and a large one for the grid-stride loops.
const std::vector<size_t> kLengths = {1, 3, 4, 8, 37, 1000, 4096, 100003, 1 << 20};

template <typename T>
class GeluCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(GeluCuda, ActivationTypes);

TYPED_TEST(GeluCuda, ForwardMatchesCpu) {
  using T = TypeParam;
  for (size_t n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::mt19937 rng(static_cast<unsigned>(n));
    const std::vector<float> x = as_type<T>(random_floats(rng, n, -5.0f, 5.0f));
    std::vector<float> want(n);
    cpu::gelu_forward(want.data(), x.data(), n);
    DeviceBuffer<T> d_x(this->ctx, x);
    DeviceBuffer<T> d_out(this->ctx, n);
    d_out.poison();
    gpu::gelu_forward(this->ctx, d_out.data(), d_x.data(), n);
    EXPECT_TRUE(norm_close(d_out.download(), want, tolerance<T>()));
  }
}

TYPED_TEST(GeluCuda, ForwardInPlaceAndMisalignedMatchesCpu) {
  using T = TypeParam;
  for (size_t n : {size_t{7}, size_t{64}, size_t{4099}}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::mt19937 rng(static_cast<unsigned>(n) + 1);
    const std::vector<float> x = as_type<T>(random_floats(rng, n + 1, -5.0f, 5.0f));
    std::vector<float> want = x;
    cpu::gelu_forward(want.data() + 1, x.data() + 1, n);
    // One element in: the data starts off the 16-byte grid, so the scalar path runs.
    DeviceBuffer<T> d_x(this->ctx, x);
    gpu::gelu_forward(this->ctx, d_x.data() + 1, d_x.data() + 1, n);
    EXPECT_TRUE(norm_close(d_x.download(), want, tolerance<T>()));
  }
}

TYPED_TEST(GeluCuda, BackwardMatchesCpu) {
  using T = TypeParam;
  for (size_t n : kLengths) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::mt19937 rng(static_cast<unsigned>(n) + 2);
    const std::vector<float> x = as_type<T>(random_floats(rng, n, -5.0f, 5.0f));
    const std::vector<float> dout = as_type<T>(random_floats(rng, n));
    std::vector<float> want(n);
    cpu::gelu_backward(want.data(), x.data(), dout.data(), n);
    DeviceBuffer<T> d_x(this->ctx, x);
    DeviceBuffer<T> d_dout(this->ctx, dout);
    DeviceBuffer<T> d_dinp(this->ctx, n);
    d_dinp.poison();
    gpu::gelu_backward(this->ctx, d_dinp.data(), d_x.data(), d_dout.data(), n);
    EXPECT_TRUE(norm_close(d_dinp.download(), want, tolerance<T>()));
    // dinp may alias dout.
    gpu::gelu_backward(this->ctx, d_dout.data(), d_x.data(), d_dout.data(), n);
    EXPECT_TRUE(norm_close(d_dout.download(), want, tolerance<T>()));
  }
}

TYPED_TEST(GeluCuda, SwigluMatchesCpu) {
  using T = TypeParam;
  for (const auto& [N, F] : {std::pair{1, 1}, std::pair{7, 33}, std::pair{64, 96}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " F=" + std::to_string(F));
    std::mt19937 rng(static_cast<unsigned>(N * F));
    const size_t n = static_cast<size_t>(N) * F;
    const std::vector<float> x = as_type<T>(random_floats(rng, 2 * n, -5.0f, 5.0f));
    const std::vector<float> dout = as_type<T>(random_floats(rng, n));
    std::vector<float> want_out(n), want_dinp(2 * n);
    cpu::swiglu_forward(want_out.data(), x.data(), N, F);
    cpu::swiglu_backward(want_dinp.data(), x.data(), dout.data(), N, F);
    DeviceBuffer<T> d_x(this->ctx, x), d_dout(this->ctx, dout);
    DeviceBuffer<T> d_out(this->ctx, n), d_dinp(this->ctx, 2 * n);
    d_out.poison();
    d_dinp.poison();
    gpu::swiglu_forward(this->ctx, d_out.data(), d_x.data(), N, F);
    gpu::swiglu_backward(this->ctx, d_dinp.data(), d_x.data(), d_dout.data(), N, F);
    EXPECT_TRUE(norm_close(d_out.download(), want_out, tolerance<T>()));
    EXPECT_TRUE(norm_close(d_dinp.download(), want_dinp, tolerance<T>()));
  }
}

template <typename T>
class VectorCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(VectorCuda, ActivationTypes);

TYPED_TEST(VectorCuda, AddAccumulatesLikeCpu) {
  using T = TypeParam;
  for (size_t n : kLengths) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
      std::mt19937 rng(static_cast<unsigned>(n) + 3);
      const std::vector<float> x = as_type<T>(random_floats(rng, n + offset));
      const std::vector<float> y = as_type<T>(random_floats(rng, n + offset));
      std::vector<float> want = y;
      cpu::vector_add(want.data() + offset, x.data() + offset, n);
      DeviceBuffer<T> d_x(this->ctx, x);
      DeviceBuffer<T> d_y(this->ctx, y);
      gpu::vector_add(this->ctx, d_y.data() + offset, d_x.data() + offset, n);
      EXPECT_TRUE(norm_close(d_y.download(), want, tolerance<T>()));
    }
  }
}

TYPED_TEST(VectorCuda, SumOverwritesLikeCpu) {
  using T = TypeParam;
  for (size_t n : kLengths) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
      std::mt19937 rng(static_cast<unsigned>(n) + 4);
      const std::vector<float> a = as_type<T>(random_floats(rng, n + offset));
      const std::vector<float> b = as_type<T>(random_floats(rng, n + offset));
      std::vector<float> want(n + offset, 0.0f);
      cpu::vector_sum(want.data() + offset, a.data() + offset, b.data() + offset, n);
      DeviceBuffer<T> d_a(this->ctx, a);
      DeviceBuffer<T> d_b(this->ctx, b);
      DeviceBuffer<T> d_y(this->ctx, std::vector<float>(n + offset, 0.0f));
      if (offset == 0) d_y.poison();
      gpu::vector_sum(this->ctx, d_y.data() + offset, d_a.data() + offset, d_b.data() + offset, n);
      EXPECT_TRUE(norm_close(d_y.download(), want, tolerance<T>()));
      // y may alias a.
      gpu::vector_sum(this->ctx, d_a.data() + offset, d_a.data() + offset, d_b.data() + offset, n);
      std::vector<float> got = d_a.download();
      got.erase(got.begin(), got.begin() + offset);
      want.erase(want.begin(), want.begin() + offset);
      EXPECT_TRUE(norm_close(got, want, tolerance<T>()));
    }
  }
}

class VectorReduceCuda : public CudaKernelTest {};

TEST_F(VectorReduceCuda, SumSquaresMatchesCpuAndIsDeterministic) {
  gpu::DeviceMemory scratch = gpu::device_alloc(gpu::vector_reduce_scratch_bytes());
  std::vector<size_t> lengths = kLengths;
  lengths.push_back(0);
  lengths.push_back((size_t{1} << 24) + 5);
  for (size_t n : lengths) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
      std::mt19937 rng(static_cast<unsigned>(n) + 5);
      const std::vector<float> x = random_floats(rng, n + offset, -3.0f, 3.0f);
      const double want = cpu::vector_sum_squares(x.data() + offset, n);
      DeviceBuffer<float> d_x(ctx, x);
      DeviceBuffer<double> d_result(ctx, 1);
      d_result.poison();
      gpu::vector_sum_squares(ctx, d_result.data(), d_x.data() + offset, n, scratch.get());
      const std::vector<double> got = d_result.download<double>();
      ASSERT_TRUE(std::isfinite(got[0]));
      EXPECT_NEAR(got[0], want, 1e-10 * std::max(1.0, want));
      const std::vector<unsigned char> first = d_result.download_bytes();
      d_result.poison();
      gpu::vector_sum_squares(ctx, d_result.data(), d_x.data() + offset, n, scratch.get());
      EXPECT_TRUE(bitwise_equal(d_result.download_bytes(), first));
    }
  }
}

TEST_F(VectorReduceCuda, AllFiniteFindsNanAndInfAnywhere) {
  gpu::DeviceMemory scratch = gpu::device_alloc(gpu::vector_reduce_scratch_bytes());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (size_t n : kLengths) {
    for (size_t offset : {size_t{0}, size_t{1}}) {
      std::mt19937 rng(static_cast<unsigned>(n) + 6);
      std::vector<float> x = random_floats(rng, n + offset);
      DeviceBuffer<int> d_result(ctx, 1);
      auto check = [&](const char* what, int expected) {
        SCOPED_TRACE(std::string(what) + " n=" + std::to_string(n) +
                     " offset=" + std::to_string(offset));
        DeviceBuffer<float> d_x(ctx, x);
        d_result.poison();
        gpu::vector_all_finite(ctx, d_result.data(), d_x.data() + offset, n, scratch.get());
        EXPECT_EQ(d_result.download<int>()[0], expected);
        EXPECT_EQ(cpu::vector_all_finite(x.data() + offset, n), expected == 1);
      };
      check("finite", 1);
      x[offset + n - 1] = nan;  // last element: the scalar tail when n % 4 != 0
      check("nan last", 0);
      x[offset + n - 1] = 0.5f;
      x[offset] = -inf;
      check("-inf first", 0);
      x[offset] = inf;
      x[offset + n / 2] = nan;
      check("inf first, nan middle", 0);
      // A non-finite value just outside the range does not count.
      if (offset == 1) {
        x = random_floats(rng, n + offset);
        x[0] = nan;
        check("nan before the range", 1);
      }
    }
  }
}

class AdamwCuda : public CudaKernelTest {};

struct AdamwCase {
  size_t n;
  size_t offset;  // elements into the buffers: 1 forces the scalar path
  float beta1;    // 0.9: torch's small-weight lerp form; 0.3: the other form
  bool with_bf16;
};

TEST_F(AdamwCuda, SeveralStepsMatchCpuAndWriteTheBf16Copy) {
  const std::vector<AdamwCase> cases = {
      {1, 0, 0.9f, true},      {37, 0, 0.9f, true},    {4096, 0, 0.9f, true},
      {4096, 1, 0.9f, true},   {4096, 0, 0.3f, false}, {100003, 0, 0.9f, true},
      {100000, 2, 0.9f, true}, {1000, 0, 0.9f, false},
  };
  const float lr = 1e-2f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
  for (const AdamwCase& c : cases) {
    SCOPED_TRACE("n=" + std::to_string(c.n) + " offset=" + std::to_string(c.offset) +
                 " beta1=" + std::to_string(c.beta1) + " bf16=" + std::to_string(c.with_bf16));
    std::mt19937 rng(static_cast<unsigned>(c.n + c.offset));
    const size_t total = c.n + c.offset;
    std::vector<float> params = random_floats(rng, total);
    std::vector<float> m(total, 0.0f), v(total, 0.0f);
    DeviceBuffer<float> d_params(ctx, params), d_m(ctx, m), d_v(ctx, v);
    DeviceBuffer<float> d_grads(ctx, total);
    DeviceBuffer<__nv_bfloat16> d_bf16(ctx, total);
    const size_t o = c.offset;
    for (long step = 1; step <= 5; step++) {
      SCOPED_TRACE("step " + std::to_string(step));
      const std::vector<float> grads = random_floats(rng, total, -2.0f, 2.0f);
      const float grad_scale = step == 3 ? 0.25f : 1.0f;
      d_grads.upload(grads);
      d_bf16.poison();
      cpu::adamw_update(params.data() + o, grads.data() + o, m.data() + o, v.data() + o, c.n, lr,
                        c.beta1, beta2, eps, weight_decay, step, grad_scale);
      gpu::adamw_update(ctx, d_params.data() + o, d_grads.data() + o, d_m.data() + o,
                        d_v.data() + o, c.n, lr, c.beta1, beta2, eps, weight_decay, step,
                        grad_scale, c.with_bf16 ? d_bf16.data() + o : nullptr);
      const std::vector<float> got_params = d_params.download();
      EXPECT_TRUE(elementwise_close(got_params, params, 1e-6, 1e-2));
      EXPECT_TRUE(norm_close(d_m.download(), m, 1e-6));
      EXPECT_TRUE(norm_close(d_v.download(), v, 1e-6));
      if (c.with_bf16) {
        // The working copy is exactly the rounded master copy (elements before the range stay
        // poisoned and are not compared).
        const std::vector<float> got_bf16 = d_bf16.download();
        for (size_t i = o; i < total; i++) {
          ASSERT_EQ(got_bf16[i], round_to_bf16(got_params[i])) << "element " << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace loom::kernels::cuda_test
