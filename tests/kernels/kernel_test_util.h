// Shared helpers for the CPU kernel tests: seeded random data, comparison of a float kernel's
// output against a double-precision reference, and a central-difference gradient check that
// verifies the reference backward itself.
//
//   std::mt19937 rng(7);
//   std::vector<float> x = random_floats(rng, n);
//   EXPECT_TRUE(close(kernel_out, reference_out(to_double(x)), 1e-5));
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

namespace loom::kernels::test {

// Uniform in [lo, hi).
inline std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

inline std::vector<double> random_doubles(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> out(n);
  for (double& x : out) x = dist(rng);
  return out;
}

inline std::vector<double> to_double(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

inline std::vector<float> nan_filled(size_t n) {
  return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

// element-wise a + b, for "accumulated" expectations: prefilled buffer + reference gradient.
inline std::vector<double> plus(const std::vector<float>& a, const std::vector<double>& b) {
  std::vector<double> out(b.size());
  for (size_t i = 0; i < b.size(); i++) out[i] = a[i] + b[i];
  return out;
}

// Passes when max_i |got_i − want_i| ≤ tol · max(floor, max_i |want_i|) and every got_i is
// finite. Scaling by the largest reference value rather than element-wise keeps the bound
// meaningful for entries that are small only because of cancellation; floor keeps it from
// collapsing when the whole reference is near zero.
template <typename Got>
::testing::AssertionResult close(const std::vector<Got>& got, const std::vector<double>& want,
                                 double tol, double floor = 1.0) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != reference size " << want.size();
  }
  double scale = floor;
  for (double w : want) scale = std::max(scale, std::abs(w));
  double worst = 0.0;
  size_t worst_at = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double g = static_cast<double>(got[i]);
    if (!std::isfinite(g)) {
      return ::testing::AssertionFailure()
             << "element " << i << " is " << g << " (reference " << want[i] << ")";
    }
    const double error = std::abs(g - want[i]);
    if (error > worst) {
      worst = error;
      worst_at = i;
    }
  }
  if (worst <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "element " << worst_at << ": got " << static_cast<double>(got[worst_at])
         << ", reference " << want[worst_at] << ", error " << worst << " > " << tol << " × "
         << scale;
}

// Checks that `analytic` is the gradient of L(x) = Σ_i w_i f(x)_i, by central differences.
inline ::testing::AssertionResult gradient_matches(
    const std::function<std::vector<double>(const std::vector<double>&)>& f, std::vector<double> x,
    const std::vector<double>& w, const std::vector<double>& analytic, double tol = 1e-6) {
  const double h = 1e-5;
  auto loss = [&](const std::vector<double>& at) {
    const std::vector<double> y = f(at);
    double sum = 0.0;
    for (size_t i = 0; i < y.size(); i++) sum += w[i] * y[i];
    return sum;
  };
  std::vector<double> numeric(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss(x);
    x[i] = saved - h;
    const double down = loss(x);
    x[i] = saved;
    numeric[i] = (up - down) / (2 * h);
  }
  return close(analytic, numeric, tol);
}

}  // namespace loom::kernels::test
