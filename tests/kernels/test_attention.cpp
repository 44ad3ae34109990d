// Blocked causal attention against a naive full-softmax double reference; the reference
// backward against finite differences; bitwise repeatability; scratch bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/threads.h"

namespace loom::kernels::test {
namespace {

struct Shape {
  int B, T, C, H;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "B=" << s.B << " T=" << s.T << " C=" << s.C << " H=" << s.H;
}

struct Attended {
  std::vector<double> out, lse;
};

size_t qkv_index(const Shape& s, int b, int t, int part, int h, int d) {
  const int hd = s.C / s.H;
  return (static_cast<size_t>(b) * s.T + t) * 3 * s.C + part * s.C + h * hd + d;
}

// Softmax weights p[i][j] (zero for j > i) of one (b, h), straight from the definition.
std::vector<std::vector<double>> reference_probabilities(const std::vector<double>& qkv,
                                                         const Shape& s, int b, int h,
                                                         std::vector<double>* lse) {
  const int hd = s.C / s.H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<std::vector<double>> p(s.T, std::vector<double>(s.T, 0.0));
  for (int i = 0; i < s.T; i++) {
    std::vector<double> score(i + 1);
    for (int j = 0; j <= i; j++) {
      double dot = 0.0;
      for (int d = 0; d < hd; d++) {
        dot += qkv[qkv_index(s, b, i, 0, h, d)] * qkv[qkv_index(s, b, j, 1, h, d)];
      }
      score[j] = dot * scale;
    }
    const double max = *std::max_element(score.begin(), score.end());
    double sum = 0.0;
    for (int j = 0; j <= i; j++) sum += std::exp(score[j] - max);
    for (int j = 0; j <= i; j++) p[i][j] = std::exp(score[j] - max) / sum;
    if (lse != nullptr) (*lse)[(static_cast<size_t>(b) * s.H + h) * s.T + i] = max + std::log(sum);
  }
  return p;
}

Attended reference_forward(const std::vector<double>& qkv, const Shape& s) {
  const int hd = s.C / s.H;
  Attended a{std::vector<double>(static_cast<size_t>(s.B) * s.T * s.C),
             std::vector<double>(static_cast<size_t>(s.B) * s.H * s.T)};
  for (int b = 0; b < s.B; b++) {
    for (int h = 0; h < s.H; h++) {
      const auto p = reference_probabilities(qkv, s, b, h, &a.lse);
      for (int i = 0; i < s.T; i++) {
        for (int d = 0; d < hd; d++) {
          double sum = 0.0;
          for (int j = 0; j <= i; j++) sum += p[i][j] * qkv[qkv_index(s, b, j, 2, h, d)];
          a.out[(static_cast<size_t>(b) * s.T + i) * s.C + h * hd + d] = sum;
        }
      }
    }
  }
  return a;
}

// Softmax backward in its textbook form, dS = P ∘ (dP − rowsum(P ∘ dP)), which the kernel
// replaces with the dO·O identity.
std::vector<double> reference_backward(const std::vector<double>& dout,
                                       const std::vector<double>& qkv, const Shape& s) {
  const int hd = s.C / s.H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> dqkv(qkv.size(), 0.0);
  auto dout_at = [&](int b, int t, int h, int d) {
    return dout[(static_cast<size_t>(b) * s.T + t) * s.C + h * hd + d];
  };
  for (int b = 0; b < s.B; b++) {
    for (int h = 0; h < s.H; h++) {
      const auto p = reference_probabilities(qkv, s, b, h, nullptr);
      for (int i = 0; i < s.T; i++) {
        std::vector<double> dp(i + 1);
        double p_dp = 0.0;
        for (int j = 0; j <= i; j++) {
          for (int d = 0; d < hd; d++)
            dp[j] += dout_at(b, i, h, d) * qkv[qkv_index(s, b, j, 2, h, d)];
          p_dp += p[i][j] * dp[j];
        }
        for (int j = 0; j <= i; j++) {
          const double ds = p[i][j] * (dp[j] - p_dp) * scale;
          for (int d = 0; d < hd; d++) {
            dqkv[qkv_index(s, b, i, 0, h, d)] += ds * qkv[qkv_index(s, b, j, 1, h, d)];
            dqkv[qkv_index(s, b, j, 1, h, d)] += ds * qkv[qkv_index(s, b, i, 0, h, d)];
            dqkv[qkv_index(s, b, j, 2, h, d)] += p[i][j] * dout_at(b, i, h, d);
          }
        }
      }
    }
  }
  return dqkv;
}

size_t qkv_size(const Shape& s) { return static_cast<size_t>(s.B) * s.T * 3 * s.C; }
size_t out_size(const Shape& s) { return static_cast<size_t>(s.B) * s.T * s.C; }
size_t lse_size(const Shape& s) { return static_cast<size_t>(s.B) * s.H * s.T; }

// Scratch with a tail of sentinels that the kernel must not touch.
class GuardedScratch {
 public:
  explicit GuardedScratch(int T)
      : size_(cpu::attention_scratch_floats(T, cpu::thread_count())),
        data_(size_ + kGuard, kSentinel) {}
  float* data() { return data_.data(); }
  bool guard_intact() const {
    return std::all_of(data_.begin() + size_, data_.end(), [](float x) { return x == kSentinel; });
  }

 private:
  static constexpr size_t kGuard = 4096;
  static constexpr float kSentinel = 12345.0f;
  size_t size_;
  std::vector<float> data_;
};

TEST(AttentionReference, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(30);
  for (const Shape s : {Shape{1, 1, 2, 1}, Shape{2, 4, 6, 3}}) {
    const auto qkv = random_doubles(rng, qkv_size(s));
    const auto w = random_doubles(rng, out_size(s));
    EXPECT_TRUE(
        gradient_matches([&](const std::vector<double>& x) { return reference_forward(x, s).out; },
                         qkv, w, reference_backward(w, qkv, s)));
  }
}

class AttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionTest, ForwardAndBackwardMatchReference) {
  const Shape s = GetParam();
  std::mt19937 rng(31);
  // A spread of ±2 makes some softmax rows sharply peaked, not all near uniform.
  const auto qkv = random_floats(rng, qkv_size(s), -2.0f, 2.0f);
  const auto dout = random_floats(rng, out_size(s));
  GuardedScratch scratch(s.T);

  auto out = nan_filled(out_size(s));
  auto lse = nan_filled(lse_size(s));
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H, s.H,
                         scratch.data());
  const Attended want = reference_forward(to_double(qkv), s);
  EXPECT_TRUE(close(out, want.out, 1e-5));
  EXPECT_TRUE(close(lse, want.lse, 1e-6));

  // NaN everywhere checks that dqkv is overwritten, k and v parts included.
  auto dqkv = nan_filled(qkv_size(s));
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                          s.C, s.H, s.H, scratch.data());
  EXPECT_TRUE(close(dqkv, reference_backward(to_double(dout), to_double(qkv), s), 1e-5));
  EXPECT_TRUE(scratch.guard_intact());
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape{1, 1, 4, 1},     // a single token
                                           Shape{2, 13, 12, 3},   // T below one row block
                                           Shape{1, 13, 15, 3},   // odd head dim
                                           Shape{1, 64, 16, 2},   // exactly one row block
                                           Shape{2, 150, 24, 3},  // partial third block
                                           Shape{1, 200, 64, 1}));

TEST(AttentionThreads, TeamFollowsThreadCount) {
  // Scratch sized for one thread must suffice once init_threads(1) is in effect, and the
  // result must not depend on how many threads shared the (b, h) pairs.
  const Shape s{2, 70, 24, 3};
  std::mt19937 rng(33);
  const auto qkv = random_floats(rng, qkv_size(s), -2.0f, 2.0f);
  const auto dout = random_floats(rng, out_size(s));
  std::vector<float> out[2], lse[2], dqkv[2];
  for (int run = 0; run < 2; run++) {
    cpu::init_threads(run == 0 ? 1 : 0);
    GuardedScratch scratch(s.T);
    out[run].resize(out_size(s));
    lse[run].resize(lse_size(s));
    dqkv[run].resize(qkv_size(s));
    cpu::attention_forward(out[run].data(), lse[run].data(), qkv.data(), s.B, s.T, s.C, s.H, s.H,
                           scratch.data());
    cpu::attention_backward(dqkv[run].data(), dout.data(), qkv.data(), out[run].data(),
                            lse[run].data(), s.B, s.T, s.C, s.H, s.H, scratch.data());
    EXPECT_TRUE(scratch.guard_intact()) << "run " << run;
  }
  EXPECT_TRUE(close(dqkv[0], reference_backward(to_double(dout), to_double(qkv), s), 1e-5));
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(dqkv[0], dqkv[1]);
}

TEST(AttentionDeterminism, RepeatedCallsAreBitwiseIdentical) {
  const Shape s{2, 150, 32, 4};
  std::mt19937 rng(32);
  const auto qkv = random_floats(rng, qkv_size(s), -2.0f, 2.0f);
  const auto dout = random_floats(rng, out_size(s));
  GuardedScratch scratch(s.T);
  std::vector<float> out[2], lse[2], dqkv[2];
  for (int run = 0; run < 2; run++) {
    out[run].resize(out_size(s));
    lse[run].resize(lse_size(s));
    dqkv[run].resize(qkv_size(s));
    cpu::attention_forward(out[run].data(), lse[run].data(), qkv.data(), s.B, s.T, s.C, s.H, s.H,
                           scratch.data());
    cpu::attention_backward(dqkv[run].data(), dout.data(), qkv.data(), out[run].data(),
                            lse[run].data(), s.B, s.T, s.C, s.H, s.H, scratch.data());
  }
  EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(lse[0].data(), lse[1].data(), lse[0].size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(dqkv[0].data(), dqkv[1].data(), dqkv[0].size() * sizeof(float)));
}

// Grouped-query attention (kv_heads < H) is multi-head attention whose key/value heads are
// repeated over each group of H / kv_heads query heads: the same output and lse, the same dq,
// and dk, dv summed over the group's copies.
TEST(AttentionGroupedQuery, EqualsHeadsWithRepeatedKeysAndValues) {
  struct Case {
    int B, T, C, H, KV;
  };
  for (const Case& c : {Case{2, 37, 32, 4, 2}, Case{1, 70, 48, 6, 1}, Case{2, 65, 48, 6, 3}}) {
    SCOPED_TRACE("H " + std::to_string(c.H) + " kv_heads " + std::to_string(c.KV));
    const int hd = c.C / c.H, Ckv = c.KV * hd, width = c.C + 2 * Ckv, group = c.H / c.KV;
    const size_t N = static_cast<size_t>(c.B) * c.T;
    std::mt19937 rng(41);
    const auto qkv = random_floats(rng, N * width, -2.0f, 2.0f);
    const auto dout = random_floats(rng, N * c.C);
    std::vector<float> full(N * 3 * c.C);  // the same heads, each key/value head repeated
    for (size_t n = 0; n < N; n++) {
      const float* row = qkv.data() + n * width;
      float* to = full.data() + n * 3 * c.C;
      std::copy_n(row, c.C, to);
      for (int h = 0; h < c.H; h++)
        for (int part = 1; part <= 2; part++)
          std::copy_n(row + c.C + (part - 1) * Ckv + (h / group) * hd, hd,
                      to + part * c.C + h * hd);
    }
    GuardedScratch scratch(c.T);
    std::vector<float> out(N * c.C), lse(N * c.H), dqkv(qkv.size());
    std::vector<float> out_full(out.size()), lse_full(lse.size()), dfull(full.size());
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), c.B, c.T, c.C, c.H, c.KV,
                           scratch.data());
    cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), c.B, c.T,
                            c.C, c.H, c.KV, scratch.data());
    cpu::attention_forward(out_full.data(), lse_full.data(), full.data(), c.B, c.T, c.C, c.H, c.H,
                           scratch.data());
    cpu::attention_backward(dfull.data(), dout.data(), full.data(), out_full.data(),
                            lse_full.data(), c.B, c.T, c.C, c.H, c.H, scratch.data());
    EXPECT_TRUE(scratch.guard_intact());
    EXPECT_TRUE(close(out, to_double(out_full), 1e-6));
    EXPECT_TRUE(close(lse, to_double(lse_full), 1e-6));
    std::vector<double> want(qkv.size(), 0.0);  // dq as is; dk, dv summed over each group
    for (size_t n = 0; n < N; n++) {
      const float* from = dfull.data() + n * 3 * c.C;
      double* row = want.data() + n * width;
      for (int i = 0; i < c.C; i++) row[i] = from[i];
      for (int h = 0; h < c.H; h++)
        for (int part = 1; part <= 2; part++)
          for (int d = 0; d < hd; d++)
            row[c.C + (part - 1) * Ckv + (h / group) * hd + d] += from[part * c.C + h * hd + d];
    }
    EXPECT_TRUE(close(dqkv, want, 1e-5));
  }
}

}  // namespace
}  // namespace loom::kernels::test
