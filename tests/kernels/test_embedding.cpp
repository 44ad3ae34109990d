// Token + position embedding against a double reference, repeated tokens included.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <ostream>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/embedding.h"

namespace loom::kernels::test {
namespace {

struct Shape {
  int B, T, C, V;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "B=" << s.B << " T=" << s.T << " C=" << s.C << " V=" << s.V;
}

std::vector<int> random_tokens(std::mt19937& rng, const Shape& s) {
  std::uniform_int_distribution<int> dist(0, s.V - 1);
  std::vector<int> tokens(static_cast<size_t>(s.B) * s.T);
  for (int& t : tokens) t = dist(rng);
  return tokens;
}

// Empty wpe means none.
std::vector<double> reference_forward(const std::vector<int>& tokens,
                                      const std::vector<double>& wte,
                                      const std::vector<double>& wpe, const Shape& s) {
  std::vector<double> out(static_cast<size_t>(s.B) * s.T * s.C);
  for (int bt = 0; bt < s.B * s.T; bt++) {
    for (int c = 0; c < s.C; c++) {
      out[bt * s.C + c] =
          wte[tokens[bt] * s.C + c] + (wpe.empty() ? 0.0 : wpe[(bt % s.T) * s.C + c]);
    }
  }
  return out;
}

struct Grads {
  std::vector<double> dwte, dwpe;
};

Grads reference_backward(const std::vector<double>& dout, const std::vector<int>& tokens,
                         const Shape& s) {
  Grads g{std::vector<double>(static_cast<size_t>(s.V) * s.C),
          std::vector<double>(static_cast<size_t>(s.T) * s.C)};
  for (int bt = 0; bt < s.B * s.T; bt++) {
    for (int c = 0; c < s.C; c++) {
      g.dwte[tokens[bt] * s.C + c] += dout[bt * s.C + c];
      g.dwpe[(bt % s.T) * s.C + c] += dout[bt * s.C + c];
    }
  }
  return g;
}

TEST(EmbeddingReference, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(50);
  const Shape s{2, 3, 5, 4};
  const auto tokens = random_tokens(rng, s);
  const auto wte = random_doubles(rng, s.V * s.C);
  const auto wpe = random_doubles(rng, s.T * s.C);
  const auto w = random_doubles(rng, s.B * s.T * s.C);
  const Grads g = reference_backward(w, tokens, s);
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& x) { return reference_forward(tokens, x, wpe, s); }, wte, w,
      g.dwte));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& x) { return reference_forward(tokens, wte, x, s); }, wpe, w,
      g.dwpe));
}

class EmbeddingTest : public ::testing::TestWithParam<Shape> {};

TEST_P(EmbeddingTest, ForwardOverwritesWithAndWithoutPositions) {
  const Shape s = GetParam();
  std::mt19937 rng(51);
  const auto tokens = random_tokens(rng, s);
  const auto wte = random_floats(rng, s.V * s.C);
  const auto wpe = random_floats(rng, s.T * s.C);
  for (bool with_wpe : {true, false}) {
    SCOPED_TRACE(with_wpe ? "with wpe" : "without wpe");
    auto out = nan_filled(static_cast<size_t>(s.B) * s.T * s.C);
    cpu::embedding_forward(out.data(), tokens.data(), wte.data(), with_wpe ? wpe.data() : nullptr,
                           s.B, s.T, s.C, 0, s.V);
    const auto want = reference_forward(tokens, to_double(wte),
                                        with_wpe ? to_double(wpe) : std::vector<double>{}, s);
    EXPECT_TRUE(close(out, want, 1e-7));
  }
}

TEST_P(EmbeddingTest, BackwardAccumulates) {
  const Shape s = GetParam();
  std::mt19937 rng(52);
  const auto tokens = random_tokens(rng, s);
  const auto dout = random_floats(rng, static_cast<size_t>(s.B) * s.T * s.C);
  const auto dwte_before = random_floats(rng, s.V * s.C);
  const auto dwpe_before = random_floats(rng, s.T * s.C);
  auto dwte = dwte_before;
  auto dwpe = dwpe_before;
  cpu::embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), s.B, s.T, s.C, 0,
                          s.V);
  const Grads g = reference_backward(to_double(dout), tokens, s);
  // dwte rows gather up to B·T float additions in place.
  EXPECT_TRUE(close(dwte, plus(dwte_before, g.dwte), 3e-6));
  EXPECT_TRUE(close(dwpe, plus(dwpe_before, g.dwpe), 3e-6));

  auto dwte_only = dwte_before;
  cpu::embedding_backward(dwte_only.data(), nullptr, dout.data(), tokens.data(), s.B, s.T, s.C, 0,
                          s.V);
  EXPECT_EQ(dwte, dwte_only);
}

// Few tokens over many positions, so every row of dwte gets many contributions.
INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingTest,
                         ::testing::Values(Shape{1, 1, 3, 2}, Shape{2, 13, 12, 5},
                                           Shape{4, 64, 40, 3}, Shape{3, 50, 100, 17}));

// A tensor-parallel rank's slice of the vocabulary: rows [begin, begin + rows). Its tokens look
// up their rows, others zeros (plus positions); only its rows get gradients. The slices of all
// ranks sum to the whole embedding and tile its gradient.
TEST_P(EmbeddingTest, VocabularySlicesTileTheWhole) {
  const Shape s = GetParam();
  std::mt19937 rng(54);
  const auto tokens = random_tokens(rng, s);
  const auto wte = random_floats(rng, s.V * s.C);
  const auto wpe = random_floats(rng, s.T * s.C);
  const auto dout = random_floats(rng, static_cast<size_t>(s.B) * s.T * s.C);
  const size_t BTC = static_cast<size_t>(s.B) * s.T * s.C;
  for (int parts : {2, 3}) {
    const int rows = (s.V + parts - 1) / parts;  // the last slice may be partly padding
    std::vector<double> sum(BTC, 0.0);
    std::vector<float> dwte(static_cast<size_t>(s.V) * s.C, 0.0f);
    for (int r = 0; r < parts; ++r) {
      const int begin = r * rows, valid = std::clamp(s.V - begin, 0, rows);
      std::vector<float> slice(static_cast<size_t>(rows) * s.C, 0.0f);
      std::copy_n(wte.begin() + static_cast<size_t>(begin) * s.C, static_cast<size_t>(valid) * s.C,
                  slice.begin());
      auto out = nan_filled(BTC);
      // Positions are added by one slice only, as tensor-parallel rank 0 does.
      cpu::embedding_forward(out.data(), tokens.data(), slice.data(), r == 0 ? wpe.data() : nullptr,
                             s.B, s.T, s.C, begin, rows);
      for (size_t i = 0; i < BTC; ++i) sum[i] += out[i];
      std::vector<float> dslice(slice.size(), 0.0f);
      cpu::embedding_backward(dslice.data(), nullptr, dout.data(), tokens.data(), s.B, s.T, s.C,
                              begin, rows);
      for (size_t i = static_cast<size_t>(valid) * s.C; i < dslice.size(); ++i)
        EXPECT_EQ(dslice[i], 0.0f);  // padding rows never receive gradient
      std::copy_n(dslice.begin(), static_cast<size_t>(valid) * s.C,
                  dwte.begin() + static_cast<size_t>(begin) * s.C);
    }
    EXPECT_TRUE(close(sum, reference_forward(tokens, to_double(wte), to_double(wpe), s), 1e-7));
    EXPECT_TRUE(close(dwte, reference_backward(to_double(dout), tokens, s).dwte, 3e-6));
  }
}

// One slice alone, the middle one of three, with positions: tokens outside it look up zeros plus
// their position; backward accumulates onto prefilled dwte rows (its own tokens only) and dwpe
// (every token).
TEST_P(EmbeddingTest, VocabularySliceWithPositionsAccumulates) {
  const Shape s = GetParam();
  std::mt19937 rng(55);
  const auto tokens = random_tokens(rng, s);
  const auto wte = random_floats(rng, s.V * s.C);
  const auto wpe = random_floats(rng, s.T * s.C);
  const auto dout = random_floats(rng, static_cast<size_t>(s.B) * s.T * s.C);
  const int rows = (s.V + 2) / 3, begin = rows, valid = std::clamp(s.V - begin, 0, rows);
  const size_t C = s.C;
  std::vector<float> slice(rows * C, 0.0f);
  std::copy_n(wte.begin() + begin * C, valid * C, slice.begin());
  // The global table with every row outside the slice zeroed: what the slice looks up.
  std::vector<double> seen(wte.size(), 0.0);
  std::copy_n(wte.begin() + begin * C, valid * C, seen.begin() + begin * C);

  auto out = nan_filled(static_cast<size_t>(s.B) * s.T * C);
  cpu::embedding_forward(out.data(), tokens.data(), slice.data(), wpe.data(), s.B, s.T, s.C, begin,
                         rows);
  EXPECT_TRUE(close(out, reference_forward(tokens, seen, to_double(wpe), s), 1e-7));

  const auto dslice_before = random_floats(rng, rows * C);
  const auto dwpe_before = random_floats(rng, s.T * C);
  auto dslice = dslice_before;
  auto dwpe = dwpe_before;
  cpu::embedding_backward(dslice.data(), dwpe.data(), dout.data(), tokens.data(), s.B, s.T, s.C,
                          begin, rows);
  const Grads g = reference_backward(to_double(dout), tokens, s);
  std::vector<double> want_dslice(rows * C, 0.0);
  std::copy_n(g.dwte.begin() + begin * C, valid * C, want_dslice.begin());
  EXPECT_TRUE(close(dslice, plus(dslice_before, want_dslice), 3e-6));
  EXPECT_TRUE(close(dwpe, plus(dwpe_before, g.dwpe), 3e-6));
}

TEST(EmbeddingDeterminism, BackwardIsBitwiseRepeatable) {
  const Shape s{8, 128, 48, 5};
  std::mt19937 rng(53);
  const auto tokens = random_tokens(rng, s);
  const auto dout = random_floats(rng, static_cast<size_t>(s.B) * s.T * s.C);
  std::vector<float> dwte[2], dwpe[2];
  for (int run = 0; run < 2; run++) {
    dwte[run].assign(static_cast<size_t>(s.V) * s.C, 0.0f);
    dwpe[run].assign(static_cast<size_t>(s.T) * s.C, 0.0f);
    cpu::embedding_backward(dwte[run].data(), dwpe[run].data(), dout.data(), tokens.data(), s.B,
                            s.T, s.C, 0, s.V);
  }
  EXPECT_EQ(0, std::memcmp(dwte[0].data(), dwte[1].data(), dwte[0].size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(dwpe[0].data(), dwpe[1].data(), dwpe[0].size() * sizeof(float)));
}

}  // namespace
}  // namespace loom::kernels::test
