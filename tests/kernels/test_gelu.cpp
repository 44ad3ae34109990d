// Tanh-approximate GELU and SwiGLU against double references; the references against finite
// differences.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/gelu.h"

namespace loom::kernels::test {
namespace {

double reference_gelu(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

double reference_gelu_grad(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  const double t = std::tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

std::vector<double> reference_forward(const std::vector<double>& x) {
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); i++) out[i] = reference_gelu(x[i]);
  return out;
}

// Inputs covering the saturated tails as well as the curved middle.
std::vector<float> gelu_input(size_t n) {
  std::mt19937 rng(20);
  return random_floats(rng, n, -8.0f, 8.0f);
}

TEST(GeluReference, MatchesIndependentlyComputedValues) {
  // 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))) evaluated in Python float64 (math module).
  EXPECT_NEAR(reference_gelu(1.0), 0.8411919906082768, 1e-15);
  EXPECT_NEAR(reference_gelu(-0.5), -0.15428599017485606, 1e-15);
  EXPECT_NEAR(reference_gelu(3.0), 2.996362607918227, 1e-15);
}

TEST(GeluReference, GradientMatchesFiniteDifferences) {
  std::mt19937 rng(21);
  const auto x = to_double(random_floats(rng, 40, -5.0f, 5.0f));
  const auto w = random_doubles(rng, x.size());
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); i++) grad[i] = w[i] * reference_gelu_grad(x[i]);
  EXPECT_TRUE(gradient_matches(reference_forward, x, w, grad));
}

TEST(Gelu, ForwardMatchesReference) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{1000}, size_t{4099}}) {
    SCOPED_TRACE(n);
    const auto x = gelu_input(n);
    auto out = nan_filled(n);
    cpu::gelu_forward(out.data(), x.data(), n);
    EXPECT_TRUE(close(out, reference_forward(to_double(x)), 1e-6));
  }
}

TEST(Gelu, BackwardOverwritesWithReferenceGradient) {
  const size_t n = 4099;
  const auto x = gelu_input(n);
  std::mt19937 rng(22);
  const auto dout = random_floats(rng, n);
  auto dinp = nan_filled(n);
  cpu::gelu_backward(dinp.data(), x.data(), dout.data(), n);
  std::vector<double> want(n);
  for (size_t i = 0; i < n; i++) want[i] = dout[i] * reference_gelu_grad(x[i]);
  // A few ulps: tanhf's error enters both terms of the derivative.
  EXPECT_TRUE(close(dinp, want, 3e-6));
}

TEST(Gelu, InPlaceMatchesOutOfPlace) {
  const size_t n = 1000;
  const auto x = gelu_input(n);
  std::mt19937 rng(23);
  const auto dout = random_floats(rng, n);
  std::vector<float> out(n), dinp(n);
  cpu::gelu_forward(out.data(), x.data(), n);
  cpu::gelu_backward(dinp.data(), x.data(), dout.data(), n);
  auto in_place = x;
  cpu::gelu_forward(in_place.data(), in_place.data(), n);
  auto grad_in_place = dout;
  cpu::gelu_backward(grad_in_place.data(), x.data(), grad_in_place.data(), n);
  EXPECT_EQ(out, in_place);
  EXPECT_EQ(dinp, grad_in_place);
}

// SwiGLU over rows [gate (F) | up (F)]: silu(gate) · up.
std::vector<double> reference_swiglu(const std::vector<double>& x, int N, int F) {
  std::vector<double> out(static_cast<size_t>(N) * F);
  for (int n = 0; n < N; n++)
    for (int f = 0; f < F; f++) {
      const double g = x[static_cast<size_t>(n) * 2 * F + f];
      const double up = x[static_cast<size_t>(n) * 2 * F + F + f];
      out[static_cast<size_t>(n) * F + f] = g / (1.0 + std::exp(-g)) * up;
    }
  return out;
}

// dx from weights w on the output: the analytic SwiGLU gradient, in double.
std::vector<double> reference_swiglu_grad(const std::vector<double>& x,
                                          const std::vector<double>& w, int N, int F) {
  std::vector<double> dx(x.size());
  for (int n = 0; n < N; n++)
    for (int f = 0; f < F; f++) {
      const size_t at = static_cast<size_t>(n) * 2 * F + f;
      const double g = x[at], up = x[at + F], dy = w[static_cast<size_t>(n) * F + f];
      const double sigmoid = 1.0 / (1.0 + std::exp(-g));
      dx[at] = dy * up * sigmoid * (1.0 + g * (1.0 - sigmoid));
      dx[at + F] = dy * g * sigmoid;
    }
  return dx;
}

TEST(SwigluReference, GradientMatchesFiniteDifferences) {
  const int N = 3, F = 7;
  std::mt19937 rng(24);
  const auto x = to_double(random_floats(rng, 2 * N * F, -6.0f, 6.0f));
  const auto w = random_doubles(rng, static_cast<size_t>(N) * F);
  EXPECT_TRUE(
      gradient_matches([&](const std::vector<double>& at) { return reference_swiglu(at, N, F); }, x,
                       w, reference_swiglu_grad(x, w, N, F)));
}

TEST(Swiglu, ForwardAndBackwardMatchReference) {
  for (const auto& [N, F] : {std::pair{1, 1}, std::pair{5, 13}, std::pair{64, 96}}) {
    SCOPED_TRACE(std::to_string(N) + "x" + std::to_string(F));
    std::mt19937 rng(25);
    const auto x = random_floats(rng, 2 * static_cast<size_t>(N) * F, -8.0f, 8.0f);
    const auto dout = random_floats(rng, static_cast<size_t>(N) * F);
    auto out = nan_filled(static_cast<size_t>(N) * F);
    auto dinp = nan_filled(x.size());
    cpu::swiglu_forward(out.data(), x.data(), N, F);
    cpu::swiglu_backward(dinp.data(), x.data(), dout.data(), N, F);
    EXPECT_TRUE(close(out, reference_swiglu(to_double(x), N, F), 1e-6));
    EXPECT_TRUE(close(dinp, reference_swiglu_grad(to_double(x), to_double(dout), N, F), 3e-6));
  }
}

}  // namespace
}  // namespace loom::kernels::test
