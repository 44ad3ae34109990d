// Rotary embedding: table and rotation against a double reference; inverse = transpose.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/rope.h"

namespace loom::kernels::test {
namespace {

constexpr float kTheta = 10000.0f;

struct Shape {
  int B, T, C, H;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "B=" << s.B << " T=" << s.T << " C=" << s.C << " H=" << s.H;
}

size_t qkv_size(const Shape& s) { return static_cast<size_t>(s.B) * s.T * 3 * s.C; }

// Rotation of q and k by angle sign · t · theta^(−2d/hd), "rotate half" pairing (d, d + hd/2).
std::vector<double> reference_rope(std::vector<double> qkv, const Shape& s, double sign) {
  const int hd = s.C / s.H;
  const int half = hd / 2;
  for (int b = 0; b < s.B; b++) {
    for (int t = 0; t < s.T; t++) {
      for (int part = 0; part < 2; part++) {
        for (int h = 0; h < s.H; h++) {
          double* x = &qkv[(static_cast<size_t>(b) * s.T + t) * 3 * s.C + part * s.C + h * hd];
          for (int d = 0; d < half; d++) {
            const double angle = sign * t * std::pow(static_cast<double>(kTheta), -2.0 * d / hd);
            const double a = x[d];
            const double c = x[d + half];
            x[d] = a * std::cos(angle) - c * std::sin(angle);
            x[d + half] = c * std::cos(angle) + a * std::sin(angle);
          }
        }
      }
    }
  }
  return qkv;
}

struct Table {
  std::vector<float> cos, sin;
};

Table make_table(int T, int hd) {
  Table table{std::vector<float>(static_cast<size_t>(T) * hd / 2),
              std::vector<float>(static_cast<size_t>(T) * hd / 2)};
  cpu::rope_table(table.cos.data(), table.sin.data(), T, hd, kTheta);
  return table;
}

TEST(RopeTable, MatchesDefinition) {
  const int T = 1000, hd = 64;
  const Table table = make_table(T, hd);
  std::vector<double> want_cos(table.cos.size()), want_sin(table.sin.size());
  for (int t = 0; t < T; t++) {
    for (int d = 0; d < hd / 2; d++) {
      const double angle = t * std::pow(10000.0, -2.0 * d / hd);
      want_cos[t * hd / 2 + d] = std::cos(angle);
      want_sin[t * hd / 2 + d] = std::sin(angle);
    }
  }
  EXPECT_TRUE(close(table.cos, want_cos, 1e-7));
  EXPECT_TRUE(close(table.sin, want_sin, 1e-7));
  // Position 1, hd = 4: frequencies 1 and 10000^(−1/2) = 0.01.
  const Table small = make_table(2, 4);
  EXPECT_FLOAT_EQ(small.cos[2], static_cast<float>(std::cos(1.0)));
  EXPECT_FLOAT_EQ(small.sin[3], static_cast<float>(std::sin(0.01)));
}

TEST(RopeTable, FromALaterPositionAreThoseRows) {
  // A sequence-parallel rank's rows: the table from position 600 is rows 600… of the whole one.
  const int hd = 64, first = 600, rows = 100;
  const Table whole = make_table(first + rows, hd);
  std::vector<float> cos(rows * hd / 2), sin(rows * hd / 2);
  cpu::rope_table(cos.data(), sin.data(), rows, hd, kTheta, first);
  for (size_t i = 0; i < cos.size(); i++) {
    EXPECT_EQ(cos[i], whole.cos[first * hd / 2 + i]) << i;
    EXPECT_EQ(sin[i], whole.sin[first * hd / 2 + i]) << i;
  }
}

TEST(RopeReference, InverseIsTheBackwardByFiniteDifferences) {
  std::mt19937 rng(40);
  const Shape s{2, 3, 8, 2};
  const auto qkv = random_doubles(rng, qkv_size(s));
  const auto w = random_doubles(rng, qkv_size(s));
  EXPECT_TRUE(
      gradient_matches([&](const std::vector<double>& x) { return reference_rope(x, s, 1.0); }, qkv,
                       w, reference_rope(w, s, -1.0)));
}

class RopeTest : public ::testing::TestWithParam<Shape> {};

TEST_P(RopeTest, ForwardAndInverseMatchReference) {
  const Shape s = GetParam();
  const Table table = make_table(s.T, s.C / s.H);
  std::mt19937 rng(41);
  const auto qkv = random_floats(rng, qkv_size(s));
  for (bool inverse : {false, true}) {
    SCOPED_TRACE(inverse ? "inverse" : "forward");
    auto rotated = qkv;
    cpu::rope_apply(rotated.data(), table.cos.data(), table.sin.data(), s.B, s.T, s.C, s.H, s.H,
                    inverse);
    EXPECT_TRUE(close(rotated, reference_rope(to_double(qkv), s, inverse ? -1.0 : 1.0), 1e-6));
    // v must be untouched, bit for bit.
    for (size_t row = 0; row < static_cast<size_t>(s.B) * s.T; row++) {
      for (int c = 2 * s.C; c < 3 * s.C; c++) {
        ASSERT_EQ(qkv[row * 3 * s.C + c], rotated[row * 3 * s.C + c]);
      }
    }
  }
}

TEST_P(RopeTest, InverseIsTranspose) {
  const Shape s = GetParam();
  const Table table = make_table(s.T, s.C / s.H);
  std::mt19937 rng(42);
  const auto x = random_floats(rng, qkv_size(s));
  const auto y = random_floats(rng, qkv_size(s));
  auto rotated_x = x;
  auto inverse_y = y;
  cpu::rope_apply(rotated_x.data(), table.cos.data(), table.sin.data(), s.B, s.T, s.C, s.H, s.H,
                  false);
  cpu::rope_apply(inverse_y.data(), table.cos.data(), table.sin.data(), s.B, s.T, s.C, s.H, s.H,
                  true);
  // ⟨R x, y⟩ = ⟨x, Rᵀ y⟩ is what makes the inverse the backward.
  double lhs = 0.0, rhs = 0.0, norm = 0.0;
  for (size_t i = 0; i < x.size(); i++) {
    lhs += static_cast<double>(rotated_x[i]) * y[i];
    rhs += static_cast<double>(x[i]) * inverse_y[i];
    norm += std::abs(static_cast<double>(x[i]) * y[i]);
  }
  EXPECT_NEAR(lhs, rhs, 1e-6 * norm);
  // And applying both gives back the input.
  cpu::rope_apply(rotated_x.data(), table.cos.data(), table.sin.data(), s.B, s.T, s.C, s.H, s.H,
                  true);
  EXPECT_TRUE(close(rotated_x, to_double(x), 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeTest,
                         ::testing::Values(Shape{1, 1, 4, 1}, Shape{2, 13, 12, 3},
                                           Shape{2, 300, 128, 2}));

}  // namespace
}  // namespace loom::kernels::test
