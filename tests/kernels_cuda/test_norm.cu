// LayerNorm and RMSNorm on the GPU against the CPU kernels on the same inputs.
#include <gtest/gtest.h>

#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/norm.h"
#include "kernels/cuda/norm.h"

namespace loom::kernels::cuda_test {
namespace {

namespace cpu = loom::kernels::cpu;
namespace gpu = loom::kernels::cuda;

constexpr float kEps = 1e-5f;

struct NormShape {
  int N, C;
  std::string name() const { return "N=" + std::to_string(N) + " C=" + std::to_string(C); }
};

// C = 36: fp32 packs only; 40 and 768: packs for both types; 1, 37: no packs. N = 300 spans
// three row tiles of the parameter-gradient reduction.
const std::vector<NormShape> kShapes = {{1, 1},    {1, 8},     {5, 37},   {7, 36},
                                        {129, 40}, {300, 768}, {64, 1000}};

// Rows with a mean well away from zero and unit-ish spread, as residual streams look.
std::vector<float> norm_input(std::mt19937& rng, const NormShape& s) {
  std::vector<float> x = random_floats(rng, static_cast<size_t>(s.N) * s.C);
  for (float& v : x) v = 3.0f + 2.0f * v;
  return x;
}

template <typename T>
class NormCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(NormCuda, ActivationTypes);

TYPED_TEST(NormCuda, LayerNormForwardMatchesCpu) {
  using T = TypeParam;
  for (const NormShape& s : kShapes) {
    SCOPED_TRACE(s.name());
    std::mt19937 rng(s.N * 1000 + s.C);
    const size_t size = static_cast<size_t>(s.N) * s.C;
    const std::vector<float> x = as_type<T>(norm_input(rng, s));
    const std::vector<float> weight = as_type<T>(random_floats(rng, s.C, 0.5f, 1.5f));
    const std::vector<float> bias = as_type<T>(random_floats(rng, s.C));
    std::vector<float> want(size), want_mean(s.N), want_rstd(s.N);
    cpu::layernorm_forward(want.data(), want_mean.data(), want_rstd.data(), x.data(), weight.data(),
                           bias.data(), s.N, s.C, kEps);
    DeviceBuffer<T> d_x(this->ctx, x), d_weight(this->ctx, weight), d_bias(this->ctx, bias);
    DeviceBuffer<T> d_out(this->ctx, size);
    DeviceBuffer<float> d_mean(this->ctx, s.N), d_rstd(this->ctx, s.N);
    d_out.poison();
    d_mean.poison();
    d_rstd.poison();
    gpu::layernorm_forward(this->ctx, d_out.data(), d_mean.data(), d_rstd.data(), d_x.data(),
                           d_weight.data(), d_bias.data(), s.N, s.C, kEps);
    EXPECT_TRUE(norm_close(d_out.download(), want, tolerance<T>()));
    // Statistics are fp32 in both types, from the same (rounded) inputs.
    EXPECT_TRUE(norm_close(d_mean.download(), want_mean, 1e-5));
    EXPECT_TRUE(norm_close(d_rstd.download(), want_rstd, 1e-5));
  }
}

TYPED_TEST(NormCuda, LayerNormBackwardAccumulatesLikeCpuAndIsDeterministic) {
  using T = TypeParam;
  for (const NormShape& s : kShapes) {
    SCOPED_TRACE(s.name());
    std::mt19937 rng(s.N * 1000 + s.C + 1);
    const size_t size = static_cast<size_t>(s.N) * s.C;
    const std::vector<float> x = as_type<T>(norm_input(rng, s));
    const std::vector<float> weight = as_type<T>(random_floats(rng, s.C, 0.5f, 1.5f));
    const std::vector<float> bias = as_type<T>(random_floats(rng, s.C));
    const std::vector<float> dout = as_type<T>(random_floats(rng, size));
    // Non-zero prefills: every gradient is accumulated.
    const std::vector<float> dinp0 = as_type<T>(random_floats(rng, size));
    const std::vector<float> dweight0 = random_floats(rng, s.C);
    const std::vector<float> dbias0 = random_floats(rng, s.C);
    std::vector<float> out(size), mean(s.N), rstd(s.N);
    cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(),
                           bias.data(), s.N, s.C, kEps);
    std::vector<float> want_dinp = dinp0, want_dweight = dweight0, want_dbias = dbias0;
    cpu::layernorm_backward(want_dinp.data(), want_dweight.data(), want_dbias.data(), dout.data(),
                            x.data(), weight.data(), mean.data(), rstd.data(), s.N, s.C);

    gpu::DeviceMemory scratch = gpu::device_alloc(gpu::layernorm_backward_scratch_bytes(s.N, s.C));
    DeviceBuffer<T> d_x(this->ctx, x), d_weight(this->ctx, weight), d_dout(this->ctx, dout);
    DeviceBuffer<float> d_mean(this->ctx, mean), d_rstd(this->ctx, rstd);
    DeviceBuffer<T> d_dinp(this->ctx, dinp0);
    DeviceBuffer<float> d_dweight(this->ctx, dweight0), d_dbias(this->ctx, dbias0);
    auto run = [&] {
      d_dinp.upload(dinp0);
      d_dweight.upload(dweight0);
      d_dbias.upload(dbias0);
      gpu::layernorm_backward(this->ctx, d_dinp.data(), d_dweight.data(), d_dbias.data(),
                              d_dout.data(), d_x.data(), d_weight.data(), d_mean.data(),
                              d_rstd.data(), s.N, s.C, scratch.get());
    };
    run();
    EXPECT_TRUE(norm_close(d_dinp.download(), want_dinp, tolerance<T>()));
    EXPECT_TRUE(norm_close(d_dweight.download(), want_dweight, tolerance<T>()));
    EXPECT_TRUE(norm_close(d_dbias.download(), want_dbias, tolerance<T>()));
    const auto first_dinp = d_dinp.download_bytes();
    const auto first_dweight = d_dweight.download_bytes();
    const auto first_dbias = d_dbias.download_bytes();
    run();
    EXPECT_TRUE(bitwise_equal(d_dinp.download_bytes(), first_dinp));
    EXPECT_TRUE(bitwise_equal(d_dweight.download_bytes(), first_dweight));
    EXPECT_TRUE(bitwise_equal(d_dbias.download_bytes(), first_dbias));
  }
}

TYPED_TEST(NormCuda, RmsNormForwardMatchesCpu) {
  using T = TypeParam;
  for (const NormShape& s : kShapes) {
    SCOPED_TRACE(s.name());
    std::mt19937 rng(s.N * 1000 + s.C + 2);
    const size_t size = static_cast<size_t>(s.N) * s.C;
    const std::vector<float> x = as_type<T>(norm_input(rng, s));
    const std::vector<float> weight = as_type<T>(random_floats(rng, s.C, 0.5f, 1.5f));
    std::vector<float> want(size), want_rstd(s.N);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), weight.data(), s.N, s.C, kEps);
    DeviceBuffer<T> d_x(this->ctx, x), d_weight(this->ctx, weight);
    DeviceBuffer<T> d_out(this->ctx, size);
    DeviceBuffer<float> d_rstd(this->ctx, s.N);
    d_out.poison();
    d_rstd.poison();
    gpu::rmsnorm_forward(this->ctx, d_out.data(), d_rstd.data(), d_x.data(), d_weight.data(), s.N,
                         s.C, kEps);
    EXPECT_TRUE(norm_close(d_out.download(), want, tolerance<T>()));
    EXPECT_TRUE(norm_close(d_rstd.download(), want_rstd, 1e-5));
  }
}

TYPED_TEST(NormCuda, RmsNormBackwardAccumulatesLikeCpuAndIsDeterministic) {
  using T = TypeParam;
  for (const NormShape& s : kShapes) {
    SCOPED_TRACE(s.name());
    std::mt19937 rng(s.N * 1000 + s.C + 3);
    const size_t size = static_cast<size_t>(s.N) * s.C;
    const std::vector<float> x = as_type<T>(norm_input(rng, s));
    const std::vector<float> weight = as_type<T>(random_floats(rng, s.C, 0.5f, 1.5f));
    const std::vector<float> dout = as_type<T>(random_floats(rng, size));
    const std::vector<float> dinp0 = as_type<T>(random_floats(rng, size));
    const std::vector<float> dweight0 = random_floats(rng, s.C);
    std::vector<float> out(size), rstd(s.N);
    cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), s.N, s.C, kEps);
    std::vector<float> want_dinp = dinp0, want_dweight = dweight0;
    cpu::rmsnorm_backward(want_dinp.data(), want_dweight.data(), dout.data(), x.data(),
                          weight.data(), rstd.data(), s.N, s.C);

    gpu::DeviceMemory scratch = gpu::device_alloc(gpu::rmsnorm_backward_scratch_bytes(s.N, s.C));
    DeviceBuffer<T> d_x(this->ctx, x), d_weight(this->ctx, weight), d_dout(this->ctx, dout);
    DeviceBuffer<float> d_rstd(this->ctx, rstd);
    DeviceBuffer<T> d_dinp(this->ctx, dinp0);
    DeviceBuffer<float> d_dweight(this->ctx, dweight0);
    auto run = [&] {
      d_dinp.upload(dinp0);
      d_dweight.upload(dweight0);
      gpu::rmsnorm_backward(this->ctx, d_dinp.data(), d_dweight.data(), d_dout.data(), d_x.data(),
                            d_weight.data(), d_rstd.data(), s.N, s.C, scratch.get());
    };
    run();
    EXPECT_TRUE(norm_close(d_dinp.download(), want_dinp, tolerance<T>()));
    EXPECT_TRUE(norm_close(d_dweight.download(), want_dweight, tolerance<T>()));
    const auto first_dinp = d_dinp.download_bytes();
    const auto first_dweight = d_dweight.download_bytes();
    run();
    EXPECT_TRUE(bitwise_equal(d_dinp.download_bytes(), first_dinp));
    EXPECT_TRUE(bitwise_equal(d_dweight.download_bytes(), first_dweight));
  }
}

TYPED_TEST(NormCuda, BackwardInputGradientMayAliasDout) {
  using T = TypeParam;
  const NormShape s{33, 64};
  std::mt19937 rng(99);
  const size_t size = static_cast<size_t>(s.N) * s.C;
  const std::vector<float> x = as_type<T>(norm_input(rng, s));
  const std::vector<float> weight = as_type<T>(random_floats(rng, s.C, 0.5f, 1.5f));
  const std::vector<float> dout = as_type<T>(random_floats(rng, size));
  std::vector<float> out(size), rstd(s.N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), s.N, s.C, kEps);
  // dinp = dout on entry, so the result is dout + gradient.
  std::vector<float> want_dinp = dout, want_dweight(s.C, 0.0f);
  cpu::rmsnorm_backward(want_dinp.data(), want_dweight.data(), dout.data(), x.data(), weight.data(),
                        rstd.data(), s.N, s.C);
  gpu::DeviceMemory scratch = gpu::device_alloc(gpu::rmsnorm_backward_scratch_bytes(s.N, s.C));
  DeviceBuffer<T> d_x(this->ctx, x), d_weight(this->ctx, weight), d_grad(this->ctx, dout);
  DeviceBuffer<float> d_rstd(this->ctx, rstd), d_dweight(this->ctx, std::vector<float>(s.C));
  gpu::rmsnorm_backward(this->ctx, d_grad.data(), d_dweight.data(), d_grad.data(), d_x.data(),
                        d_weight.data(), d_rstd.data(), s.N, s.C, scratch.get());
  EXPECT_TRUE(norm_close(d_grad.download(), want_dinp, tolerance<T>()));
  EXPECT_TRUE(norm_close(d_dweight.download(), want_dweight, tolerance<T>()));
}

}  // namespace
}  // namespace loom::kernels::cuda_test
