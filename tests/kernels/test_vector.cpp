// Elementwise helpers and deterministic reductions.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/vector.h"

namespace loom::kernels::test {
namespace {

TEST(Vector, AddAccumulates) {
  std::mt19937 rng(80);
  const auto x = random_floats(rng, 1001);
  const auto y_before = random_floats(rng, 1001);
  auto y = y_before;
  cpu::vector_add(y.data(), x.data(), y.size());
  for (size_t i = 0; i < y.size(); i++) ASSERT_EQ(y[i], y_before[i] + x[i]);
}

TEST(Vector, SumOverwritesAndMayAlias) {
  std::mt19937 rng(81);
  const auto a = random_floats(rng, 1001);
  const auto b = random_floats(rng, 1001);
  auto y = nan_filled(a.size());
  cpu::vector_sum(y.data(), a.data(), b.data(), y.size());
  for (size_t i = 0; i < y.size(); i++) ASSERT_EQ(y[i], a[i] + b[i]);
  auto aliased = a;
  cpu::vector_sum(aliased.data(), aliased.data(), b.data(), aliased.size());
  EXPECT_EQ(aliased, y);
}

TEST(Vector, SumSquaresMatchesLongDoubleAndRepeats) {
  std::mt19937 rng(82);
  for (size_t n : {size_t{0}, size_t{1}, size_t{65537}, size_t{1000003}}) {
    SCOPED_TRACE(n);
    const auto x = random_floats(rng, n);
    long double want = 0.0L;
    for (float f : x) want += static_cast<long double>(f) * f;
    const double got = cpu::vector_sum_squares(x.data(), n);
    // Blocks of 2^16 summed in double: the bound is ~2^16 · 2^-53, far below float rounding.
    EXPECT_NEAR(got, static_cast<double>(want), 1e-11 * static_cast<double>(want));
    EXPECT_EQ(got, cpu::vector_sum_squares(x.data(), n));
  }
}

TEST(Vector, AllFiniteFindsNanAndInfAnywhere) {
  std::vector<float> x(1003, 1.0f);
  EXPECT_TRUE(cpu::vector_all_finite(x.data(), x.size()));
  EXPECT_TRUE(cpu::vector_all_finite(x.data(), 0));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{0}, size_t{500}, x.size() - 1}) {
      auto y = x;
      y[at] = bad;
      EXPECT_FALSE(cpu::vector_all_finite(y.data(), y.size())) << "value " << bad << " at " << at;
    }
  }
  x[5] = std::numeric_limits<float>::max();
  EXPECT_TRUE(cpu::vector_all_finite(x.data(), x.size()));
}

}  // namespace
}  // namespace loom::kernels::test
