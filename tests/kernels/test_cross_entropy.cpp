// Fused LM head + cross-entropy against a double reference, with chunks that do not divide N.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/cross_entropy.h"

namespace loom::kernels::test {
namespace {

struct Case {
  int N, C, V, chunk;
  float weight_scale;  // large values push logits far from 0, testing the max subtraction
  // Float logits carry an absolute error that grows with their size, and softmax turns it into
  // a relative error of the probabilities, so the gradient tolerance follows the logit scale.
  double tol;
};

void PrintTo(const Case& k, std::ostream* os) {
  *os << "N=" << k.N << " C=" << k.C << " V=" << k.V << " chunk=" << k.chunk
      << " weight_scale=" << k.weight_scale;
}

struct Result {
  double loss_sum;
  std::vector<double> dx, dweight;
};

Result reference(const std::vector<double>& x, const std::vector<double>& weight,
                 const std::vector<int>& targets, const Case& k, double grad_scale) {
  Result r{0.0, std::vector<double>(static_cast<size_t>(k.N) * k.C),
           std::vector<double>(static_cast<size_t>(k.V) * k.C)};
  for (int n = 0; n < k.N; n++) {
    std::vector<double> logits(k.V);
    for (int v = 0; v < k.V; v++) {
      for (int c = 0; c < k.C; c++) logits[v] += x[n * k.C + c] * weight[v * k.C + c];
    }
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (double l : logits) sum += std::exp(l - max);
    const double lse = max + std::log(sum);
    r.loss_sum += lse - logits[targets[n]];
    for (int v = 0; v < k.V; v++) {
      const double dlogit = (std::exp(logits[v] - lse) - (v == targets[n])) * grad_scale;
      for (int c = 0; c < k.C; c++) {
        r.dx[n * k.C + c] += dlogit * weight[v * k.C + c];
        r.dweight[v * k.C + c] += dlogit * x[n * k.C + c];
      }
    }
  }
  return r;
}

std::vector<int> random_targets(std::mt19937& rng, int N, int V) {
  std::uniform_int_distribution<int> dist(0, V - 1);
  std::vector<int> targets(N);
  for (int& t : targets) t = dist(rng);
  return targets;
}

TEST(CrossEntropyReference, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(60);
  const Case k{3, 4, 5, 0, 1.0f, 0.0};
  const auto x = random_doubles(rng, k.N * k.C);
  const auto weight = random_doubles(rng, k.V * k.C);
  const auto targets = random_targets(rng, k.N, k.V);
  const double grad_scale = 0.37;
  const Result r = reference(x, weight, targets, k, grad_scale);
  // dx and dweight are the gradients of grad_scale · Σ loss.
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) {
        return std::vector<double>{reference(v, weight, targets, k, 1.0).loss_sum};
      },
      x, {grad_scale}, r.dx));
  EXPECT_TRUE(gradient_matches(
      [&](const std::vector<double>& v) {
        return std::vector<double>{reference(x, v, targets, k, 1.0).loss_sum};
      },
      weight, {grad_scale}, r.dweight));
}

class CrossEntropyTest : public ::testing::TestWithParam<Case> {};

TEST_P(CrossEntropyTest, LossAndGradientsMatchReference) {
  const Case k = GetParam();
  std::mt19937 rng(61);
  const auto x = random_floats(rng, k.N * k.C);
  auto weight = random_floats(rng, k.V * k.C);
  for (float& w : weight) w *= k.weight_scale;
  const auto targets = random_targets(rng, k.N, k.V);
  const float grad_scale = 1.0f / k.N;
  const size_t scratch_size = cpu::lm_head_scratch_floats(k.chunk, k.V);
  std::vector<float> scratch(scratch_size + 1024, 12345.0f);
  const Result want = reference(to_double(x), to_double(weight), targets, k, grad_scale);

  auto dx = nan_filled(x.size());
  const auto dweight_before = random_floats(rng, weight.size());
  auto dweight = dweight_before;
  const double loss =
      cpu::lm_head_cross_entropy(dx.data(), dweight.data(), x.data(), weight.data(), targets.data(),
                                 k.N, k.C, k.V, grad_scale, scratch.data(), k.chunk);
  EXPECT_NEAR(loss, want.loss_sum, 2e-6 * std::max(1.0, want.loss_sum));
  EXPECT_TRUE(close(dx, want.dx, k.tol));
  EXPECT_TRUE(close(dweight, plus(dweight_before, want.dweight), k.tol));
  EXPECT_TRUE(std::all_of(scratch.begin() + scratch_size, scratch.end(),
                          [](float f) { return f == 12345.0f; }));

  // Without dx only the loss is computed and dweight is left alone.
  auto untouched = dweight_before;
  const double loss_only =
      cpu::lm_head_cross_entropy(nullptr, untouched.data(), x.data(), weight.data(), targets.data(),
                                 k.N, k.C, k.V, grad_scale, scratch.data(), k.chunk);
  EXPECT_EQ(loss, loss_only);
  EXPECT_EQ(untouched, dweight_before);
}

INSTANTIATE_TEST_SUITE_P(Cases, CrossEntropyTest,
                         ::testing::Values(Case{1, 4, 3, 1, 1.0f, 1e-6},     // one row
                                           Case{7, 12, 19, 3, 1.0f, 1e-6},   // chunk ∤ N
                                           Case{7, 12, 19, 7, 1.0f, 1e-6},   // one exact chunk
                                           Case{7, 12, 19, 16, 1.0f, 1e-6},  // chunk > N
                                           Case{50, 32, 101, 16, 1.0f, 1e-6},
                                           // logits in the hundreds
                                           Case{13, 16, 37, 5, 60.0f, 1e-5}));

// The vocabulary-parallel pieces over V split into `parts` padded blocks, with the reductions
// over the blocks done here as the tensor-parallel all-reduces would (MAX, then SUM): loss and
// dlogits against the double reference; padding columns (filled with garbage) ignored and their
// gradient 0; a block with no valid column (V = 5 over 4 parts) contributes nothing.
TEST(CrossEntropyVocabParallel, BlocksReducedGiveTheFullLossAndGradient) {
  std::mt19937 rng(62);
  for (auto [N, V, parts, scale] : {std::tuple{6, 19, 2, 1.0f}, {6, 19, 3, 1.0f}, {5, 5, 4, 1.0f},
                                    {9, 37, 4, 40.0f}}) {
    SCOPED_TRACE("N=" + std::to_string(N) + " V=" + std::to_string(V) + " parts=" +
                 std::to_string(parts));
    auto logits = random_floats(rng, static_cast<size_t>(N) * V);
    for (float& l : logits) l *= scale;
    const auto targets = random_targets(rng, N, V);
    const float grad_scale = 0.25f;
    const int rows = (V + parts - 1) / parts;
    std::vector<std::vector<float>> blocks(parts);
    std::vector<float> row_max(N, -INFINITY), sums(2 * N, 0.0f);
    for (int p = 0; p < parts; ++p) {
      const int begin = p * rows, valid = std::clamp(V - begin, 0, rows);
      blocks[p].assign(static_cast<size_t>(N) * rows, 1e30f);  // padding: must be ignored
      for (int n = 0; n < N; ++n)
        std::copy_n(logits.begin() + static_cast<size_t>(n) * V + begin, valid,
                    blocks[p].begin() + static_cast<size_t>(n) * rows);
      std::vector<float> local_max(N, 7.0f);
      cpu::cross_entropy_local_max(local_max.data(), blocks[p].data(), N, rows, valid);
      for (int n = 0; n < N; ++n) row_max[n] = std::max(row_max[n], local_max[n]);
      if (valid == 0) {
        for (float m : local_max) EXPECT_EQ(m, -INFINITY);
      }
    }
    for (int p = 0; p < parts; ++p) {
      const int begin = p * rows, valid = std::clamp(V - begin, 0, rows);
      auto local = nan_filled(2 * N);
      cpu::cross_entropy_local_sums(local.data(), blocks[p].data(), row_max.data(), targets.data(),
                                    N, rows, valid, begin);
      for (int i = 0; i < 2 * N; ++i) sums[i] += local[i];
    }
    double want_loss = 0.0;
    std::vector<double> want_grad(static_cast<size_t>(N) * V);
    for (int n = 0; n < N; ++n) {
      double max = -INFINITY, sum = 0.0;
      for (int v = 0; v < V; ++v) max = std::max<double>(max, logits[n * V + v]);
      for (int v = 0; v < V; ++v) sum += std::exp(logits[n * V + v] - max);
      const double lse = max + std::log(sum);
      want_loss += lse - logits[n * V + targets[n]];
      for (int v = 0; v < V; ++v)
        want_grad[n * V + v] = (std::exp(logits[n * V + v] - lse) - (v == targets[n])) * grad_scale;
    }
    const double loss = cpu::cross_entropy_local_loss(row_max.data(), sums.data(), N);
    EXPECT_NEAR(loss, want_loss, 2e-6 * std::max(1.0, want_loss));
    std::vector<float> grad(static_cast<size_t>(N) * V);
    for (int p = 0; p < parts; ++p) {
      const int begin = p * rows, valid = std::clamp(V - begin, 0, rows);
      cpu::cross_entropy_local_grad(blocks[p].data(), row_max.data(), sums.data(), targets.data(), N,
                                    rows, valid, begin, grad_scale);
      for (int n = 0; n < N; ++n) {
        std::copy_n(blocks[p].begin() + static_cast<size_t>(n) * rows, valid,
                    grad.begin() + static_cast<size_t>(n) * V + begin);
        for (int j = valid; j < rows; ++j) EXPECT_EQ(blocks[p][n * rows + j], 0.0f);
      }
    }
    EXPECT_TRUE(close(grad, want_grad, 1e-6));
  }
}

}  // namespace
}  // namespace loom::kernels::test
