// The check of vocab_parallel_cross_entropy that both test binaries run (a group of one in
// parallel_unit_tests, every test group under mpirun in parallel_tests): on one communicator,
// against the full fused kernel kernels::cpu::lm_head_cross_entropy on the same x and global
// weight. Every rank draws the same global inputs from the seed and holds its shard's rows of the
// weight, padding rows filled with large garbage that must be ignored.
//
// Collective over `comm`: every rank calls it with the same arguments but its own shard, and it
// uses EXPECT_* only, so no rank returns early.
//
//   expect_vocab_parallel_matches_full(*comm, vocab_shard(37, comm->size(), comm->rank()),
//                                      {.N = 13, .C = 8, .V = 37, .chunk = 5});
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/backend.h"
#include "kernels/cpu/cross_entropy.h"
#include "parallel/communicator.h"
#include "parallel/vocab_parallel.h"

namespace loom::test {

struct VocabParallelCase {
  int N, C, V, chunk;
};

inline std::vector<float> vocab_test_floats(std::mt19937& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ‖got − want‖ / ‖want‖ (‖got‖ when want is 0).
inline double norm_relative(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    ref += static_cast<double>(want[i]) * want[i];
  }
  return ref > 0.0 ? std::sqrt(diff / ref) : std::sqrt(diff);
}

// Checks, for this rank's `shard` of the vocabulary:
//   the loss (1e-5 relative) and dx, complete on every rank (1e-5 norm-relative);
//   dweight's valid rows against the global reference's rows (1e-5 norm-relative), its padding
//   rows exactly 0;
//   the loss alone (dx null) equal and nothing written; dx without dweight equal.
inline void expect_vocab_parallel_matches_full(Communicator& comm, const VocabShard& shard,
                                               const VocabParallelCase& k) {
  SCOPED_TRACE("group " + comm.name() + " (rank " + std::to_string(comm.rank()) + " of " +
               std::to_string(comm.size()) + ") N=" + std::to_string(k.N) +
               " V=" + std::to_string(k.V) + " chunk=" + std::to_string(k.chunk) + " shard [" +
               std::to_string(shard.vocab_begin) + ", +" + std::to_string(shard.rows) +
               "), valid " + std::to_string(shard.valid));
  const auto backend = kernels::cpu::make_cpu_backend();
  const size_t NC = static_cast<size_t>(k.N) * k.C;
  std::mt19937 rng(1000 + 7 * k.V + k.N);  // the same global inputs on every rank
  const std::vector<float> x = vocab_test_floats(rng, NC, 1.0f);
  const std::vector<float> weight = vocab_test_floats(rng, static_cast<size_t>(k.V) * k.C, 3.0f);
  std::vector<int> targets(k.N);
  for (int& t : targets) t = static_cast<int>(rng() % static_cast<unsigned>(k.V));
  const float grad_scale = 1.0f / k.N;

  std::vector<float> want_dx(NC), want_dweight(weight.size(), 0.0f);
  std::vector<float> full_scratch(kernels::cpu::lm_head_scratch_floats(k.chunk, k.V));
  const double want_loss = kernels::cpu::lm_head_cross_entropy(
      want_dx.data(), want_dweight.data(), x.data(), weight.data(), targets.data(), k.N, k.C, k.V,
      grad_scale, full_scratch.data(), k.chunk);

  // Padding rows hold garbage whose logits would dominate every row if they were not ignored.
  const size_t valid_floats = static_cast<size_t>(shard.valid) * k.C;
  const size_t begin_float = static_cast<size_t>(shard.vocab_begin) * k.C;
  std::vector<float> local(static_cast<size_t>(shard.rows) * k.C, 50.0f);
  if (shard.valid > 0) std::copy_n(weight.begin() + begin_float, valid_floats, local.begin());
  std::vector<char> scratch(vocab_parallel_scratch_bytes(*backend, k.chunk, shard.rows));

  std::vector<float> dx(NC, NAN), dweight(local.size(), 0.0f);
  const double loss = vocab_parallel_cross_entropy(*backend, comm, dx.data(), dweight.data(),
                                                   x.data(), local.data(), targets.data(), k.N, k.C,
                                                   shard, grad_scale, scratch.data(), k.chunk);
  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
  EXPECT_LT(norm_relative(dx, want_dx), 1e-5);
  if (shard.valid > 0) {
    const std::vector<float> got_rows(dweight.begin(), dweight.begin() + valid_floats);
    const std::vector<float> want_rows(want_dweight.begin() + begin_float,
                                       want_dweight.begin() + begin_float + valid_floats);
    EXPECT_LT(norm_relative(got_rows, want_rows), 1e-5);
  }
  EXPECT_TRUE(std::all_of(dweight.begin() + valid_floats, dweight.end(), [](float g) {
    return g == 0.0f;
  })) << "padding rows got gradient";

  // Loss only: the same loss; dweight is not touched even when passed.
  std::vector<float> untouched(local.size(), 0.0f);
  const double loss_only = vocab_parallel_cross_entropy(
      *backend, comm, nullptr, untouched.data(), x.data(), local.data(), targets.data(), k.N, k.C,
      shard, grad_scale, scratch.data(), k.chunk);
  EXPECT_EQ(loss_only, loss);
  EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](float g) { return g == 0.0f; }));

  // dx without a weight gradient: the same dx.
  std::vector<float> dx_only(NC, NAN);
  const double loss_dx_only = vocab_parallel_cross_entropy(
      *backend, comm, dx_only.data(), nullptr, x.data(), local.data(), targets.data(), k.N, k.C,
      shard, grad_scale, scratch.data(), k.chunk);
  EXPECT_EQ(loss_dx_only, loss);
  EXPECT_EQ(dx_only, dx);
}

}  // namespace loom::test
