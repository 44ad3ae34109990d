// LayerNorm and RMSNorm against double references; the references against finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/norm.h"

namespace loom::kernels::test {
namespace {

constexpr double kEps = 1e-5;

struct Shape {
  int N, C;
};

void PrintTo(const Shape& s, std::ostream* os) { *os << "N=" << s.N << " C=" << s.C; }

struct Normalized {
  std::vector<double> out, mean, rstd;
};

// LayerNorm as torch: biased variance, eps inside the square root.
Normalized reference_layernorm(const std::vector<double>& x, const std::vector<double>& weight,
                               const std::vector<double>& bias, const Shape& s) {
  Normalized r{std::vector<double>(x.size()), std::vector<double>(s.N), std::vector<double>(s.N)};
  for (int n = 0; n < s.N; n++) {
    const double* row = &x[n * s.C];
    double mean = 0.0;
    for (int c = 0; c < s.C; c++) mean += row[c];
    mean /= s.C;
    double variance = 0.0;
    for (int c = 0; c < s.C; c++) variance += (row[c] - mean) * (row[c] - mean);
    variance /= s.C;
    const double rstd = 1.0 / std::sqrt(variance + kEps);
    for (int c = 0; c < s.C; c++) {
      r.out[n * s.C + c] = (row[c] - mean) * rstd * weight[c] + bias[c];
    }
    r.mean[n] = mean;
    r.rstd[n] = rstd;
  }
  return r;
}

struct Grads {
  std::vector<double> dinp, dweight, dbias;
};

Grads reference_layernorm_backward(const std::vector<double>& dout, const std::vector<double>& x,
                                   const std::vector<double>& weight, const Shape& s) {
  const Normalized f = reference_layernorm(x, weight, std::vector<double>(s.C), s);
  Grads g{std::vector<double>(x.size()), std::vector<double>(s.C), std::vector<double>(s.C)};
  for (int n = 0; n < s.N; n++) {
    std::vector<double> xhat(s.C), dxhat(s.C);
    double dxhat_mean = 0.0, dxhat_xhat_mean = 0.0;
    for (int c = 0; c < s.C; c++) {
      xhat[c] = (x[n * s.C + c] - f.mean[n]) * f.rstd[n];
      dxhat[c] = dout[n * s.C + c] * weight[c];
      dxhat_mean += dxhat[c] / s.C;
      dxhat_xhat_mean += dxhat[c] * xhat[c] / s.C;
      g.dweight[c] += dout[n * s.C + c] * xhat[c];
      g.dbias[c] += dout[n * s.C + c];
    }
    for (int c = 0; c < s.C; c++) {
      g.dinp[n * s.C + c] = f.rstd[n] * (dxhat[c] - dxhat_mean - xhat[c] * dxhat_xhat_mean);
    }
  }
  return g;
}

// RMSNorm: x · rsqrt(mean(x²) + eps) · weight.
Normalized reference_rmsnorm(const std::vector<double>& x, const std::vector<double>& weight,
                             const Shape& s) {
  Normalized r{std::vector<double>(x.size()), {}, std::vector<double>(s.N)};
  for (int n = 0; n < s.N; n++) {
    double mean_square = 0.0;
    for (int c = 0; c < s.C; c++) mean_square += x[n * s.C + c] * x[n * s.C + c];
    mean_square /= s.C;
    r.rstd[n] = 1.0 / std::sqrt(mean_square + kEps);
    for (int c = 0; c < s.C; c++) r.out[n * s.C + c] = x[n * s.C + c] * r.rstd[n] * weight[c];
  }
  return r;
}

Grads reference_rmsnorm_backward(const std::vector<double>& dout, const std::vector<double>& x,
                                 const std::vector<double>& weight, const Shape& s) {
  const Normalized f = reference_rmsnorm(x, weight, s);
  Grads g{std::vector<double>(x.size()), std::vector<double>(s.C), {}};
  for (int n = 0; n < s.N; n++) {
    const double r = f.rstd[n];
    // d/dx_j of x_c·r = r·δ_cj − x_c·r³·x_j / C
    double dy_w_x = 0.0;
    for (int c = 0; c < s.C; c++) dy_w_x += dout[n * s.C + c] * weight[c] * x[n * s.C + c];
    for (int c = 0; c < s.C; c++) {
      const double xc = x[n * s.C + c];
      g.dinp[n * s.C + c] = dout[n * s.C + c] * weight[c] * r - xc * r * r * r * dy_w_x / s.C;
      g.dweight[c] += dout[n * s.C + c] * xc * r;
    }
  }
  return g;
}

// Rows with a mean well away from zero and unit-ish spread, as residual streams look.
std::vector<float> norm_input(std::mt19937& rng, const Shape& s) {
  auto x = random_floats(rng, static_cast<size_t>(s.N) * s.C, -1.0f, 1.0f);
  for (float& v : x) v = 3.0f + 2.0f * v;
  return x;
}

TEST(NormReference, LayerNormBackwardMatchesFiniteDifferences) {
  std::mt19937 rng(10);
  const Shape s{3, 5};
  const auto x = random_doubles(rng, s.N * s.C);
  const auto weight = random_doubles(rng, s.C);
  const auto bias = random_doubles(rng, s.C);
  const auto w = random_doubles(rng, s.N * s.C);
  const Grads g = reference_layernorm_backward(w, x, weight, s);
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) { return reference_layernorm(v, weight, bias, s).out; }, x,
      w, g.dinp));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) { return reference_layernorm(x, v, bias, s).out; }, weight,
      w, g.dweight));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) { return reference_layernorm(x, weight, v, s).out; }, bias,
      w, g.dbias));
}

TEST(NormReference, RmsNormBackwardMatchesFiniteDifferences) {
  std::mt19937 rng(11);
  const Shape s{3, 5};
  const auto x = random_doubles(rng, s.N * s.C);
  const auto weight = random_doubles(rng, s.C);
  const auto w = random_doubles(rng, s.N * s.C);
  const Grads g = reference_rmsnorm_backward(w, x, weight, s);
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) { return reference_rmsnorm(v, weight, s).out; }, x, w,
      g.dinp));
  EXPECT_TRUE(
      gradient_matches([&](const std::vector<double>& v) { return reference_rmsnorm(x, v, s).out; },
                       weight, w, g.dweight));
}

class NormTest : public ::testing::TestWithParam<Shape> {};

TEST_P(NormTest, LayerNormForward) {
  const Shape s = GetParam();
  std::mt19937 rng(12);
  const auto x = norm_input(rng, s);
  const auto weight = random_floats(rng, s.C);
  const auto bias = random_floats(rng, s.C);
  auto out = nan_filled(x.size());
  auto mean = nan_filled(s.N);
  auto rstd = nan_filled(s.N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias.data(),
                         s.N, s.C, static_cast<float>(kEps));
  const Normalized want = reference_layernorm(to_double(x), to_double(weight), to_double(bias), s);
  EXPECT_TRUE(close(out, want.out, 2e-6));
  EXPECT_TRUE(close(mean, want.mean, 1e-6));
  EXPECT_TRUE(close(rstd, want.rstd, 1e-6));
}

TEST_P(NormTest, LayerNormBackwardAccumulates) {
  const Shape s = GetParam();
  std::mt19937 rng(13);
  const auto x = norm_input(rng, s);
  const auto weight = random_floats(rng, s.C);
  const auto bias = random_floats(rng, s.C);
  const auto dout = random_floats(rng, x.size());
  std::vector<float> out(x.size()), mean(s.N), rstd(s.N);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(), bias.data(),
                         s.N, s.C, static_cast<float>(kEps));
  const auto dinp_before = random_floats(rng, x.size());
  const auto dweight_before = random_floats(rng, s.C);
  const auto dbias_before = random_floats(rng, s.C);
  auto dinp = dinp_before;
  auto dweight = dweight_before;
  auto dbias = dbias_before;
  cpu::layernorm_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), x.data(),
                          weight.data(), mean.data(), rstd.data(), s.N, s.C);
  const Grads g = reference_layernorm_backward(to_double(dout), to_double(x), to_double(weight), s);
  // dinp's rounding is amplified by rstd, which is 316 for the constant rows of C = 1.
  EXPECT_TRUE(close(dinp, plus(dinp_before, g.dinp), 2e-5));
  EXPECT_TRUE(close(dweight, plus(dweight_before, g.dweight), 1e-5));
  EXPECT_TRUE(close(dbias, plus(dbias_before, g.dbias), 1e-6));
}

TEST_P(NormTest, RmsNormForward) {
  const Shape s = GetParam();
  std::mt19937 rng(14);
  const auto x = norm_input(rng, s);
  const auto weight = random_floats(rng, s.C);
  auto out = nan_filled(x.size());
  auto rstd = nan_filled(s.N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), s.N, s.C,
                       static_cast<float>(kEps));
  const Normalized want = reference_rmsnorm(to_double(x), to_double(weight), s);
  EXPECT_TRUE(close(out, want.out, 1e-6));
  EXPECT_TRUE(close(rstd, want.rstd, 1e-6));
}

TEST_P(NormTest, RmsNormBackwardAccumulates) {
  const Shape s = GetParam();
  std::mt19937 rng(15);
  const auto x = norm_input(rng, s);
  const auto weight = random_floats(rng, s.C);
  const auto dout = random_floats(rng, x.size());
  std::vector<float> out(x.size()), rstd(s.N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), weight.data(), s.N, s.C,
                       static_cast<float>(kEps));
  const auto dinp_before = random_floats(rng, x.size());
  const auto dweight_before = random_floats(rng, s.C);
  auto dinp = dinp_before;
  auto dweight = dweight_before;
  cpu::rmsnorm_backward(dinp.data(), dweight.data(), dout.data(), x.data(), weight.data(),
                        rstd.data(), s.N, s.C);
  const Grads g = reference_rmsnorm_backward(to_double(dout), to_double(x), to_double(weight), s);
  EXPECT_TRUE(close(dinp, plus(dinp_before, g.dinp), 1e-6));
  EXPECT_TRUE(close(dweight, plus(dweight_before, g.dweight), 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Shapes, NormTest,
                         ::testing::Values(Shape{2, 1}, Shape{1, 8}, Shape{7, 12}, Shape{5, 33},
                                           Shape{70, 100}));

}  // namespace
}  // namespace loom::kernels::test
