// matmul_forward/backward against a double reference; the reference against finite differences.
#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/matmul.h"

namespace loom::kernels::test {
namespace {

using cpu::matmul_backward;
using cpu::matmul_forward;

// Float sgemm rounding over up to 300-term dot products, with room for other BLAS kernels'
// summation orders; bugs show up as errors of 1e-3 and more.
constexpr double kTol = 3e-6;

struct Shape {
  int N, IC, OC;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "N=" << s.N << " IC=" << s.IC << " OC=" << s.OC;
}

// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC); empty bias means none.
std::vector<double> reference_forward(const std::vector<double>& inp,
                                      const std::vector<double>& weight,
                                      const std::vector<double>& bias, const Shape& s) {
  std::vector<double> out(static_cast<size_t>(s.N) * s.OC);
  for (int n = 0; n < s.N; n++) {
    for (int o = 0; o < s.OC; o++) {
      double sum = bias.empty() ? 0.0 : bias[o];
      for (int i = 0; i < s.IC; i++) sum += inp[n * s.IC + i] * weight[o * s.IC + i];
      out[n * s.OC + o] = sum;
    }
  }
  return out;
}

struct Grads {
  std::vector<double> dinp, dweight, dbias;
};

Grads reference_backward(const std::vector<double>& dout, const std::vector<double>& inp,
                         const std::vector<double>& weight, const Shape& s) {
  Grads g{std::vector<double>(static_cast<size_t>(s.N) * s.IC),
          std::vector<double>(static_cast<size_t>(s.OC) * s.IC), std::vector<double>(s.OC)};
  for (int n = 0; n < s.N; n++) {
    for (int o = 0; o < s.OC; o++) {
      const double d = dout[n * s.OC + o];
      g.dbias[o] += d;
      for (int i = 0; i < s.IC; i++) {
        g.dinp[n * s.IC + i] += d * weight[o * s.IC + i];
        g.dweight[o * s.IC + i] += d * inp[n * s.IC + i];
      }
    }
  }
  return g;
}

TEST(MatmulReference, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(1);
  const Shape s{3, 4, 5};
  const auto inp = random_doubles(rng, s.N * s.IC);
  const auto weight = random_doubles(rng, s.OC * s.IC);
  const auto bias = random_doubles(rng, s.OC);
  const auto w = random_doubles(rng, s.N * s.OC);
  const Grads g = reference_backward(w, inp, weight, s);
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& x) { return reference_forward(x, weight, bias, s); }, inp, w,
      g.dinp));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& x) { return reference_forward(inp, x, bias, s); }, weight, w,
      g.dweight));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& x) { return reference_forward(inp, weight, x, s); }, bias, w,
      g.dbias));
}

class MatmulTest : public ::testing::TestWithParam<Shape> {};

TEST_P(MatmulTest, ForwardOverwritesOutput) {
  const Shape s = GetParam();
  std::mt19937 rng(2);
  const auto inp = random_floats(rng, s.N * s.IC);
  const auto weight = random_floats(rng, s.OC * s.IC);
  const auto bias = random_floats(rng, s.OC);
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "with bias" : "without bias");
    auto out = nan_filled(static_cast<size_t>(s.N) * s.OC);
    matmul_forward(out.data(), inp.data(), weight.data(), with_bias ? bias.data() : nullptr, s.N,
                   s.IC, s.OC);
    const auto want = reference_forward(to_double(inp), to_double(weight),
                                        with_bias ? to_double(bias) : std::vector<double>{}, s);
    EXPECT_TRUE(close(out, want, kTol));
  }
}

TEST_P(MatmulTest, BackwardOverwritesDinpAndAccumulatesParameterGradients) {
  const Shape s = GetParam();
  std::mt19937 rng(3);
  const auto inp = random_floats(rng, s.N * s.IC);
  const auto weight = random_floats(rng, s.OC * s.IC);
  const auto dout = random_floats(rng, s.N * s.OC);
  const auto dweight_before = random_floats(rng, s.OC * s.IC);
  const auto dbias_before = random_floats(rng, s.OC);
  auto dinp = nan_filled(static_cast<size_t>(s.N) * s.IC);
  auto dweight = dweight_before;
  auto dbias = dbias_before;
  matmul_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(), weight.data(),
                  s.N, s.IC, s.OC);
  const Grads g = reference_backward(to_double(dout), to_double(inp), to_double(weight), s);
  EXPECT_TRUE(close(dinp, g.dinp, kTol));
  EXPECT_TRUE(close(dweight, plus(dweight_before, g.dweight), kTol));
  EXPECT_TRUE(close(dbias, plus(dbias_before, g.dbias), kTol));
}

TEST_P(MatmulTest, BackwardSkipsNullDinpAndDbias) {
  const Shape s = GetParam();
  std::mt19937 rng(4);
  const auto inp = random_floats(rng, s.N * s.IC);
  const auto weight = random_floats(rng, s.OC * s.IC);
  const auto dout = random_floats(rng, s.N * s.OC);
  std::vector<float> dweight(static_cast<size_t>(s.OC) * s.IC, 0.0f);
  matmul_backward(nullptr, dweight.data(), nullptr, dout.data(), inp.data(), weight.data(), s.N,
                  s.IC, s.OC);
  const Grads g = reference_backward(to_double(dout), to_double(inp), to_double(weight), s);
  EXPECT_TRUE(close(dweight, g.dweight, kTol));
}

// dinp alone (the vocabulary-parallel head computes dweight separately): the same dinp; the
// bias gradient is still accumulated.
TEST_P(MatmulTest, BackwardSkipsNullDweight) {
  const Shape s = GetParam();
  std::mt19937 rng(5);
  const auto inp = random_floats(rng, s.N * s.IC);
  const auto weight = random_floats(rng, s.OC * s.IC);
  const auto dout = random_floats(rng, s.N * s.OC);
  auto dinp = nan_filled(static_cast<size_t>(s.N) * s.IC);
  std::vector<float> dbias(s.OC, 0.0f);
  matmul_backward(dinp.data(), nullptr, dbias.data(), dout.data(), inp.data(), weight.data(), s.N,
                  s.IC, s.OC);
  const Grads g = reference_backward(to_double(dout), to_double(inp), to_double(weight), s);
  EXPECT_TRUE(close(dinp, g.dinp, kTol));
  EXPECT_TRUE(close(dbias, g.dbias, kTol));
}

TEST(MatmulDeterminism, BiasGradientIsBitwiseRepeatable) {
  const Shape s{513, 8, 100};
  std::mt19937 rng(5);
  const auto inp = random_floats(rng, s.N * s.IC);
  const auto weight = random_floats(rng, s.OC * s.IC);
  const auto dout = random_floats(rng, s.N * s.OC);
  std::vector<float> first, second;
  for (auto* dbias : {&first, &second}) {
    std::vector<float> dweight(static_cast<size_t>(s.OC) * s.IC, 0.0f);
    dbias->assign(s.OC, 0.0f);
    matmul_backward(nullptr, dweight.data(), dbias->data(), dout.data(), inp.data(), weight.data(),
                    s.N, s.IC, s.OC);
  }
  EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulTest,
                         ::testing::Values(Shape{1, 1, 1}, Shape{7, 12, 5}, Shape{13, 33, 17},
                                           Shape{64, 96, 130}, Shape{300, 20, 40}));

}  // namespace
}  // namespace loom::kernels::test
