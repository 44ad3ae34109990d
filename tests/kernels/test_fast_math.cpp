// fast_exp and fast_tanh against double-precision std::exp / std::tanh over their whole range.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/cpu/fast_math.h"

namespace loom::kernels::cpu {
namespace {

TEST(FastMath, ExpIsWithinTwoUlpsOverTheNormalRange) {
  double worst = 0.0;
  for (double x = -87.0; x <= 88.3; x += 0.00173) {
    const double exact = std::exp(static_cast<double>(static_cast<float>(x)));
    const double got = fast_exp(static_cast<float>(x));
    worst = std::max(worst, std::fabs(got - exact) / exact);
  }
  EXPECT_LT(worst, 2.5e-7);
}

TEST(FastMath, ExpClampsAndPropagatesNaN) {
  EXPECT_GT(fast_exp(-1000.0f), 0.0f);
  EXPECT_LT(fast_exp(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isfinite(fast_exp(1000.0f)));
  EXPECT_GT(fast_exp(1000.0f), 1e38f);
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<float>::quiet_NaN())));
}

TEST(FastMath, TanhAbsoluteErrorIsBelowFloatRounding) {
  double worst = 0.0;
  for (double x = -20.0; x <= 20.0; x += 0.000731) {
    const double exact = std::tanh(static_cast<double>(static_cast<float>(x)));
    worst = std::max(worst, std::fabs(fast_tanh(static_cast<float>(x)) - exact));
  }
  EXPECT_LT(worst, 2.5e-7);
  EXPECT_EQ(fast_tanh(50.0f), 1.0f);
  EXPECT_EQ(fast_tanh(-50.0f), -1.0f);
  EXPECT_TRUE(std::isnan(fast_tanh(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace
}  // namespace loom::kernels::cpu
