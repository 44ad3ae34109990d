// CUDA lm_head_cross_entropy against the CPU kernel on the same inputs (rounded to bf16 for the
// bf16 path): chunks that do not divide N, one row, vocabularies past one gradient segment (the
// in-place bf16 write), dx poisoned with NaN first, dweight accumulated into a pre-filled buffer,
// the loss-only and no-dweight paths, bitwise determinism, and a NaN loss for a bad target.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cuda/cross_entropy.h"

namespace loom::kernels::cuda_test {
namespace {

struct Shape {
  int N, C, V, chunk;
};

std::string describe(const Shape& s) {
  return "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) + " V=" + std::to_string(s.V) +
         " chunk=" + std::to_string(s.chunk);
}

const std::vector<Shape> kShapes = {
    {1, 16, 53, 4},      // one row, chunk larger than N
    {37, 32, 100, 8},    // a partial last chunk
    {64, 64, 1000, 64},  // one chunk
    {21, 37, 5003, 5},   // odd C; V past one 4096-value gradient segment
    {9, 24, 9001, 4},    // three segments per row
};

struct Inputs {
  std::vector<float> x, weight, dweight0;
  std::vector<int> targets;
};

template <typename T>
Inputs make_inputs(const Shape& s, unsigned seed) {
  std::mt19937 rng(seed);
  Inputs in;
  in.x = as_type<T>(random_floats(rng, static_cast<size_t>(s.N) * s.C));
  in.weight = as_type<T>(random_floats(rng, static_cast<size_t>(s.V) * s.C));
  in.dweight0 = random_floats(rng, static_cast<size_t>(s.V) * s.C);
  in.targets = random_ints(rng, s.N, s.V);
  return in;
}

struct Result {
  double loss;
  std::vector<float> dx, dweight;
};

Result cpu_reference(const Inputs& in, const Shape& s, bool with_dx, bool with_dweight) {
  Result r{0.0, std::vector<float>(static_cast<size_t>(s.N) * s.C), in.dweight0};
  std::vector<float> scratch(cpu::lm_head_scratch_floats(s.chunk, s.V));
  r.loss = cpu::lm_head_cross_entropy(
      with_dx ? r.dx.data() : nullptr, with_dweight ? r.dweight.data() : nullptr, in.x.data(),
      in.weight.data(), in.targets.data(), s.N, s.C, s.V, 1.0f / s.N, scratch.data(), s.chunk);
  return r;
}

::testing::AssertionResult loss_close(double got, double want, double tol) {
  if (std::isfinite(got) && std::abs(got - want) <= tol * std::abs(want)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "loss " << got << ", reference " << want;
}

template <typename T>
struct Device {
  DeviceBuffer<T> x, weight, dx;
  DeviceBuffer<float> dweight;
  DeviceBuffer<int> targets;
  DeviceBuffer<double> loss;
  DeviceBuffer<unsigned char> scratch;

  Device(const Context& ctx, const Inputs& in, const Shape& s)
      : x(ctx, in.x),
        weight(ctx, in.weight),
        dx(ctx, static_cast<size_t>(s.N) * s.C),
        dweight(ctx, in.dweight0),
        targets(ctx, in.targets),
        loss(ctx, 1),
        scratch(ctx, cuda::lm_head_scratch_bytes(s.chunk, s.V)) {
    dx.poison();
    loss.poison();
    scratch.poison();
  }

  void run(const Context& ctx, const Shape& s, bool with_dx, bool with_dweight,
           cuda::MatmulCache* cache = nullptr) {
    cuda::lm_head_cross_entropy<T>(ctx, loss.data(), with_dx ? dx.data() : nullptr,
                                   with_dweight ? dweight.data() : nullptr, x.data(), weight.data(),
                                   targets.data(), s.N, s.C, s.V, 1.0f / s.N, scratch.data(),
                                   s.chunk, cache);
  }
};

template <typename T>
using CrossEntropyTest = CudaKernelTypedTest<T>;
TYPED_TEST_SUITE(CrossEntropyTest, ActivationTypes);

TYPED_TEST(CrossEntropyTest, MatchesCpu) {
  using T = TypeParam;
  cuda::MatmulCache cache;
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    const Inputs in = make_inputs<T>(s, 21);
    const Result want = cpu_reference(in, s, true, true);
    Device<T> device(this->ctx, in, s);
    device.run(this->ctx, s, true, true, &cache);
    EXPECT_TRUE(loss_close(device.loss.template download<double>()[0], want.loss, tolerance<T>()));
    EXPECT_TRUE(norm_close(device.dx.download(), want.dx, tolerance<T>()));
    EXPECT_TRUE(norm_close(device.dweight.download(), want.dweight, tolerance<T>()));
  }
}

// dx null: the loss only; dweight is left exactly as it was.
TYPED_TEST(CrossEntropyTest, LossOnly) {
  using T = TypeParam;
  const Shape s{37, 32, 5003, 8};
  const Inputs in = make_inputs<T>(s, 22);
  const Result want = cpu_reference(in, s, false, false);
  Device<T> device(this->ctx, in, s);
  const std::vector<unsigned char> dweight_before = device.dweight.download_bytes();
  device.run(this->ctx, s, false, true);
  EXPECT_TRUE(loss_close(device.loss.template download<double>()[0], want.loss, tolerance<T>()));
  EXPECT_TRUE(bitwise_equal(device.dweight.download_bytes(), dweight_before));
}

// dweight null: dx and the loss as usual.
TYPED_TEST(CrossEntropyTest, WithoutDweight) {
  using T = TypeParam;
  const Shape s{37, 32, 100, 8};
  const Inputs in = make_inputs<T>(s, 23);
  const Result want = cpu_reference(in, s, true, false);
  Device<T> device(this->ctx, in, s);
  device.run(this->ctx, s, true, false);
  EXPECT_TRUE(loss_close(device.loss.template download<double>()[0], want.loss, tolerance<T>()));
  EXPECT_TRUE(norm_close(device.dx.download(), want.dx, tolerance<T>()));
}

TYPED_TEST(CrossEntropyTest, IsDeterministic) {
  using T = TypeParam;
  const Shape s{21, 37, 5003, 5};
  const Inputs in = make_inputs<T>(s, 24);
  std::vector<std::vector<unsigned char>> losses, dxs, dweights;
  for (int run = 0; run < 2; run++) {
    Device<T> device(this->ctx, in, s);
    device.run(this->ctx, s, true, true);
    losses.push_back(device.loss.download_bytes());
    dxs.push_back(device.dx.download_bytes());
    dweights.push_back(device.dweight.download_bytes());
  }
  EXPECT_TRUE(bitwise_equal(losses[0], losses[1]));
  EXPECT_TRUE(bitwise_equal(dxs[0], dxs[1]));
  EXPECT_TRUE(bitwise_equal(dweights[0], dweights[1]));
}

// A target outside [0, V) makes the loss NaN instead of reading out of bounds.
TYPED_TEST(CrossEntropyTest, BadTargetGivesNanLoss) {
  using T = TypeParam;
  const Shape s{4, 16, 53, 4};
  Inputs in = make_inputs<T>(s, 25);
  in.targets[2] = s.V;
  Device<T> device(this->ctx, in, s);
  device.run(this->ctx, s, false, false);
  EXPECT_TRUE(std::isnan(device.loss.template download<double>()[0]));
}

// The vocabulary-parallel pieces against the CPU pieces on the same block of logits (n, Vl)
// whose last Vl − valid columns are padding (filled with large values that must be ignored):
// row max, sums, the loss and the in-place gradient; outputs poisoned first.
template <typename T>
class VocabParallelCrossEntropyCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(VocabParallelCrossEntropyCuda, ActivationTypes);

TYPED_TEST(VocabParallelCrossEntropyCuda, PiecesMatchCpu) {
  using T = TypeParam;
  struct Block {
    int n, Vl, valid, vocab_begin;
  };
  for (const Block& b : {Block{1, 7, 7, 0}, Block{19, 130, 101, 260}, Block{33, 1000, 999, 1000}}) {
    SCOPED_TRACE("n=" + std::to_string(b.n) + " Vl=" + std::to_string(b.Vl) +
                 " valid=" + std::to_string(b.valid));
    std::mt19937 rng(b.n + b.Vl);
    std::vector<float> logits = random_floats(rng, static_cast<size_t>(b.n) * b.Vl, -4.0f, 4.0f);
    for (int i = 0; i < b.n; i++)
      for (int v = b.valid; v < b.Vl; v++) logits[static_cast<size_t>(i) * b.Vl + v] = 1e4f;
    logits = as_type<T>(logits);
    // Targets inside and outside this block.
    const std::vector<int> local = random_ints(rng, b.n, 2 * b.valid);
    std::vector<int> targets(b.n);
    for (int i = 0; i < b.n; i++) targets[i] = b.vocab_begin + local[i];
    const float grad_scale = 0.125f;

    std::vector<float> want_max(b.n), want_sums(2 * b.n), want_grad = logits;
    cpu::cross_entropy_local_max(want_max.data(), logits.data(), b.n, b.Vl, b.valid);
    cpu::cross_entropy_local_sums(want_sums.data(), logits.data(), want_max.data(), targets.data(),
                                  b.n, b.Vl, b.valid, b.vocab_begin);
    const double want_loss = cpu::cross_entropy_local_loss(want_max.data(), want_sums.data(), b.n);
    cpu::cross_entropy_local_grad(want_grad.data(), want_max.data(), want_sums.data(),
                                  targets.data(), b.n, b.Vl, b.valid, b.vocab_begin, grad_scale);

    DeviceBuffer<T> d_logits(this->ctx, logits);
    DeviceBuffer<int> d_targets(this->ctx, targets);
    DeviceBuffer<float> d_max(this->ctx, static_cast<size_t>(b.n)), d_sums(this->ctx, 2 * b.n);
    DeviceBuffer<double> d_loss(this->ctx, 1);
    d_max.poison();
    d_sums.poison();
    d_loss.poison();
    cuda::cross_entropy_local_max(this->ctx, d_max.data(), d_logits.data(), b.n, b.Vl, b.valid);
    EXPECT_TRUE(norm_close(d_max.download(), want_max, 1e-6));
    cuda::cross_entropy_local_sums(this->ctx, d_sums.data(), d_logits.data(), d_max.data(),
                                  d_targets.data(), b.n, b.Vl, b.valid, b.vocab_begin);
    EXPECT_TRUE(norm_close(d_sums.download(), want_sums, 1e-5));
    cuda::cross_entropy_local_loss(this->ctx, d_loss.data(), d_max.data(), d_sums.data(), b.n);
    EXPECT_NEAR(d_loss.template download<double>()[0], want_loss, 1e-5 * std::fabs(want_loss));
    cuda::cross_entropy_local_grad(this->ctx, d_logits.data(), d_max.data(), d_sums.data(),
                                  d_targets.data(), b.n, b.Vl, b.valid, b.vocab_begin, grad_scale);
    EXPECT_TRUE(norm_close(d_logits.download(), want_grad, tolerance<T>()));
  }
}

}  // namespace
}  // namespace loom::kernels::cuda_test
