// CUDA matmul_forward/backward against the CPU kernel on the same inputs (rounded to bf16 for the
// bf16 path): outputs poisoned with NaN first, gradients accumulated into pre-filled buffers,
// the null dinp/dbias paths, the misaligned-bias fallback, the algorithm cache, and bitwise
// determinism of repeated calls.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/matmul.h"

namespace loom::kernels::cuda_test {
namespace {

struct Shape {
  int N, IC, OC;
};

std::string describe(const Shape& s) {
  return "N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC);
}

const std::vector<Shape> kShapes = {
    {1, 37, 53}, {7, 64, 48}, {33, 37, 53}, {64, 128, 96}, {130, 256, 129}};

// Host inputs of one case, already as type T sees them.
struct Inputs {
  std::vector<float> inp, weight, bias, dout, dweight0, dbias0;
};

template <typename T>
Inputs make_inputs(const Shape& s, unsigned seed) {
  std::mt19937 rng(seed);
  Inputs in;
  in.inp = as_type<T>(random_floats(rng, static_cast<size_t>(s.N) * s.IC));
  in.weight = as_type<T>(random_floats(rng, static_cast<size_t>(s.OC) * s.IC));
  in.bias = as_type<T>(random_floats(rng, s.OC));
  in.dout = as_type<T>(random_floats(rng, static_cast<size_t>(s.N) * s.OC));
  in.dweight0 = random_floats(rng, static_cast<size_t>(s.OC) * s.IC);  // float buffers
  in.dbias0 = random_floats(rng, s.OC);
  return in;
}

std::vector<float> cpu_forward(const Inputs& in, const Shape& s, bool with_bias) {
  std::vector<float> out(static_cast<size_t>(s.N) * s.OC);
  cpu::matmul_forward(out.data(), in.inp.data(), in.weight.data(),
                      with_bias ? in.bias.data() : nullptr, s.N, s.IC, s.OC);
  return out;
}

template <typename T>
using MatmulTest = CudaKernelTypedTest<T>;
TYPED_TEST_SUITE(MatmulTest, ActivationTypes);

TYPED_TEST(MatmulTest, ForwardMatchesCpu) {
  using T = TypeParam;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    const Inputs in = make_inputs<T>(s, 1);
    DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), bias(this->ctx, in.bias);
    DeviceBuffer<T> out(this->ctx, static_cast<size_t>(s.N) * s.OC);
    for (bool with_bias : {true, false}) {
      SCOPED_TRACE(with_bias ? "with bias" : "without bias");
      out.poison();
      cuda::matmul_forward<T>(this->ctx, out.data(), inp.data(), weight.data(),
                              with_bias ? bias.data() : nullptr, s.N, s.IC, s.OC);
      EXPECT_TRUE(norm_close(out.download(), cpu_forward(in, s, with_bias), tolerance<T>()));
    }
  }
}

// A bias one element into its buffer is not 16-byte aligned: the epilogue is skipped and the
// bias seeds the output instead. Same result either way.
TYPED_TEST(MatmulTest, ForwardWithMisalignedBias) {
  using T = TypeParam;
  const Shape s{9, 40, 24};
  const Inputs in = make_inputs<T>(s, 2);
  std::vector<float> shifted_bias(1, 0.0f);
  shifted_bias.insert(shifted_bias.end(), in.bias.begin(), in.bias.end());
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight);
  DeviceBuffer<T> bias(this->ctx, shifted_bias);
  DeviceBuffer<T> out(this->ctx, static_cast<size_t>(s.N) * s.OC);
  out.poison();
  cuda::matmul_forward<T>(this->ctx, out.data(), inp.data(), weight.data(), bias.data() + 1, s.N,
                          s.IC, s.OC);
  EXPECT_TRUE(norm_close(out.download(), cpu_forward(in, s, true), tolerance<T>()));
}

TYPED_TEST(MatmulTest, CacheGivesTheSameBits) {
  using T = TypeParam;
  const Shape s{33, 37, 53};
  const Inputs in = make_inputs<T>(s, 3);
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), bias(this->ctx, in.bias);
  DeviceBuffer<T> uncached(this->ctx, static_cast<size_t>(s.N) * s.OC);
  DeviceBuffer<T> cached(this->ctx, static_cast<size_t>(s.N) * s.OC);
  cuda::matmul_forward<T>(this->ctx, uncached.data(), inp.data(), weight.data(), bias.data(), s.N,
                          s.IC, s.OC);
  cuda::MatmulCache cache;
  size_t entries = 0;
  for (int round = 0; round < 2; round++) {
    cached.poison();
    cuda::matmul_forward<T>(this->ctx, cached.data(), inp.data(), weight.data(), bias.data(), s.N,
                            s.IC, s.OC, &cache);
    // One entry, or two when cuBLASLt declined the bias epilogue; none added by the second call.
    if (round == 0) entries = cache.size();
    EXPECT_GE(cache.size(), 1u);
    EXPECT_EQ(cache.size(), entries);
    EXPECT_TRUE(bitwise_equal(cached.download_bytes(), uncached.download_bytes()));
  }
}

TYPED_TEST(MatmulTest, BackwardMatchesCpuAndAccumulates) {
  using T = TypeParam;
  cuda::MatmulCache cache;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    const Inputs in = make_inputs<T>(s, 4);
    std::vector<float> want_dinp(static_cast<size_t>(s.N) * s.IC);
    std::vector<float> want_dweight = in.dweight0, want_dbias = in.dbias0;
    cpu::matmul_backward(want_dinp.data(), want_dweight.data(), want_dbias.data(), in.dout.data(),
                         in.inp.data(), in.weight.data(), s.N, s.IC, s.OC);

    DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), dout(this->ctx, in.dout);
    DeviceBuffer<T> dinp(this->ctx, want_dinp.size());
    DeviceBuffer<float> dweight(this->ctx, in.dweight0), dbias(this->ctx, in.dbias0);
    dinp.poison();
    cuda::matmul_backward<T>(this->ctx, dinp.data(), dweight.data(), dbias.data(), dout.data(),
                             inp.data(), weight.data(), s.N, s.IC, s.OC, &cache);
    EXPECT_TRUE(norm_close(dinp.download(), want_dinp, tolerance<T>()));
    EXPECT_TRUE(norm_close(dweight.download(), want_dweight, tolerance<T>()));
    EXPECT_TRUE(norm_close(dbias.download(), want_dbias, tolerance<T>()));
  }
}

// dinp and dbias null: only dweight is touched (and still accumulated).
TYPED_TEST(MatmulTest, BackwardWithoutDinpAndDbias) {
  using T = TypeParam;
  const Shape s{33, 37, 53};
  const Inputs in = make_inputs<T>(s, 5);
  std::vector<float> want_dweight = in.dweight0;
  cpu::matmul_backward(nullptr, want_dweight.data(), nullptr, in.dout.data(), in.inp.data(),
                       in.weight.data(), s.N, s.IC, s.OC);
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), dout(this->ctx, in.dout);
  DeviceBuffer<float> dweight(this->ctx, in.dweight0);
  cuda::matmul_backward<T>(this->ctx, nullptr, dweight.data(), nullptr, dout.data(), inp.data(),
                           weight.data(), s.N, s.IC, s.OC);
  EXPECT_TRUE(norm_close(dweight.download(), want_dweight, tolerance<T>()));
}

// dweight null (the vocabulary-parallel head computes it separately): dinp and dbias as with it.
TYPED_TEST(MatmulTest, BackwardWithoutDweight) {
  using T = TypeParam;
  const Shape s{33, 37, 53};
  const Inputs in = make_inputs<T>(s, 7);
  std::vector<float> want_dinp(static_cast<size_t>(s.N) * s.IC), want_dbias = in.dbias0;
  cpu::matmul_backward(want_dinp.data(), nullptr, want_dbias.data(), in.dout.data(), in.inp.data(),
                       in.weight.data(), s.N, s.IC, s.OC);
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), dout(this->ctx, in.dout);
  DeviceBuffer<T> dinp(this->ctx, static_cast<size_t>(s.N) * s.IC);
  DeviceBuffer<float> dbias(this->ctx, in.dbias0);
  dinp.poison();
  cuda::matmul_backward<T>(this->ctx, dinp.data(), nullptr, dbias.data(), dout.data(), inp.data(),
                           weight.data(), s.N, s.IC, s.OC);
  EXPECT_TRUE(norm_close(dinp.download(), want_dinp, tolerance<T>()));
  EXPECT_TRUE(norm_close(dbias.download(), want_dbias, 1e-5));
}

TYPED_TEST(MatmulTest, BackwardIsDeterministic) {
  using T = TypeParam;
  const Shape s{130, 256, 129};
  const Inputs in = make_inputs<T>(s, 6);
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), dout(this->ctx, in.dout);
  std::vector<std::vector<unsigned char>> runs[3];
  for (int run = 0; run < 2; run++) {
    DeviceBuffer<T> dinp(this->ctx, static_cast<size_t>(s.N) * s.IC);
    DeviceBuffer<float> dweight(this->ctx, in.dweight0), dbias(this->ctx, in.dbias0);
    dinp.poison();
    cuda::matmul_backward<T>(this->ctx, dinp.data(), dweight.data(), dbias.data(), dout.data(),
                             inp.data(), weight.data(), s.N, s.IC, s.OC);
    runs[0].push_back(dinp.download_bytes());
    runs[1].push_back(dweight.download_bytes());
    runs[2].push_back(dbias.download_bytes());
  }
  for (const auto& outputs : runs) EXPECT_TRUE(bitwise_equal(outputs[0], outputs[1]));
}

// The column sum over many rows (several row lanes per column, a partial last column block).
TYPED_TEST(MatmulTest, BiasGradientOverManyRows) {
  using T = TypeParam;
  const Shape s{4099, 8, 37};
  const Inputs in = make_inputs<T>(s, 7);
  std::vector<float> want_dinp(static_cast<size_t>(s.N) * s.IC);
  std::vector<float> want_dweight = in.dweight0, want_dbias = in.dbias0;
  cpu::matmul_backward(want_dinp.data(), want_dweight.data(), want_dbias.data(), in.dout.data(),
                       in.inp.data(), in.weight.data(), s.N, s.IC, s.OC);
  DeviceBuffer<T> inp(this->ctx, in.inp), weight(this->ctx, in.weight), dout(this->ctx, in.dout);
  DeviceBuffer<T> dinp(this->ctx, want_dinp.size());
  DeviceBuffer<float> dweight(this->ctx, in.dweight0), dbias(this->ctx, in.dbias0);
  dinp.poison();
  cuda::matmul_backward<T>(this->ctx, dinp.data(), dweight.data(), dbias.data(), dout.data(),
                           inp.data(), weight.data(), s.N, s.IC, s.OC);
  EXPECT_TRUE(norm_close(dinp.download(), want_dinp, tolerance<T>()));
  EXPECT_TRUE(norm_close(dweight.download(), want_dweight, tolerance<T>()));
  EXPECT_TRUE(elementwise_close(dbias.download(), want_dbias, tolerance<T>(), 1.0));
}

}  // namespace
}  // namespace loom::kernels::cuda_test
