// Vocabulary-parallel LM head + cross-entropy over each test group against the full fused kernel
// on the same x and global weight: vocabularies the group size does not divide (padded), several
// chunks, with and without gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/cross_entropy.h"
#include "parallel/vocab_parallel.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

std::vector<float> random_floats(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

double norm_relative(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    ref += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / std::max(ref, 1e-300));
}

TEST(VocabParallel, ShardsCoverThePaddedVocabulary) {
  const VocabShard last = vocab_shard(37, 4, 3);
  EXPECT_EQ(last.rows, 10);
  EXPECT_EQ(last.vocab_begin, 30);
  EXPECT_EQ(last.valid, 7);
  EXPECT_EQ(vocab_shard(5, 4, 3).valid, 0);  // 2 rows each: rank 3 holds only padding
  EXPECT_EQ(vocab_shard(64, 4, 2).valid, 16);
}

TEST(VocabParallel, MatchesTheFullCrossEntropy) {
  const auto backend = kernels::cpu::make_cpu_backend();
  const int N = 13, C = 8, chunk = 5;
  for (Communicator* comm : communicators()) {
    for (int V : {37, 64, 5}) {
      SCOPED_TRACE("group " + comm->name() + " V=" + std::to_string(V));
      std::mt19937 rng(1000 + V);  // the same global inputs on every rank
      const std::vector<float> x = random_floats(rng, static_cast<size_t>(N) * C);
      std::vector<float> weight = random_floats(rng, static_cast<size_t>(V) * C);
      for (float& w : weight) w *= 3.0f;
      std::vector<int> targets(N);
      for (int& t : targets) t = static_cast<int>(rng() % V);
      const float grad_scale = 1.0f / N;

      std::vector<float> want_dx(x.size()), want_dweight(weight.size(), 0.0f);
      std::vector<float> scratch(kernels::cpu::lm_head_scratch_floats(chunk, V));
      const double want_loss = kernels::cpu::lm_head_cross_entropy(
          want_dx.data(), want_dweight.data(), x.data(), weight.data(), targets.data(), N, C, V,
          grad_scale, scratch.data(), chunk);

      const VocabShard shard = vocab_shard(V, comm->size(), comm->rank());
      std::vector<float> local(static_cast<size_t>(shard.rows) * C, 0.0f);
      std::copy_n(weight.begin() + static_cast<size_t>(shard.vocab_begin) * C,
                  static_cast<size_t>(shard.valid) * C, local.begin());
      std::vector<char> vp_scratch(vocab_parallel_scratch_bytes(*backend, chunk, shard.rows));
      std::vector<float> dx(x.size(), NAN), dweight(local.size(), 0.0f);
      const double loss = vocab_parallel_cross_entropy(
          *backend, *comm, dx.data(), dweight.data(), x.data(), local.data(), targets.data(), N, C,
          shard, grad_scale, vp_scratch.data(), chunk);
      EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
      EXPECT_LT(norm_relative(dx, want_dx), 1e-5);
      const std::vector<float> want_rows(
          want_dweight.begin() + static_cast<size_t>(shard.vocab_begin) * C,
          want_dweight.begin() + static_cast<size_t>(shard.vocab_begin + shard.valid) * C);
      const std::vector<float> got_rows(dweight.begin(),
                                        dweight.begin() + static_cast<size_t>(shard.valid) * C);
      if (shard.valid > 0) {
        EXPECT_LT(norm_relative(got_rows, want_rows), 1e-5);
      }
      EXPECT_TRUE(std::all_of(dweight.begin() + static_cast<size_t>(shard.valid) * C,
                              dweight.end(), [](float g) { return g == 0.0f; }))
          << "padding rows got gradient";

      // Loss only: no gradient written, same loss.
      const double loss_only = vocab_parallel_cross_entropy(
          *backend, *comm, nullptr, nullptr, x.data(), local.data(), targets.data(), N, C, shard,
          grad_scale, vp_scratch.data(), chunk);
      EXPECT_EQ(loss_only, loss);
    }
  }
}

}  // namespace
}  // namespace loom::test
