// Ring attention (parallel/ring_attention.h) over sp groups of 2, 3 and 4 ranks (cut out of the
// job's world) against whole causal attention computed on every rank: each rank's output, lse
// and qkv gradient rows must equal the whole attention's at the rank's global positions, for
// the zigzag and the contiguous layouts. Ulysses (parallel/ulysses_attention.h) the same way: its
// output and qkv gradient rows, and its head group's lse over the whole sequence.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/threads.h"
#include "parallel/ring_attention.h"
#include "parallel/ulysses_attention.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

std::vector<float> random_vector(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The rows of (B, T, width) at `positions`, per sequence.
std::vector<float> rows_at(const std::vector<float>& x, const std::vector<int>& positions, int B,
                           int T, int width) {
  std::vector<float> out;
  for (int b = 0; b < B; ++b)
    for (int p : positions)
      out.insert(out.end(), x.begin() + (static_cast<size_t>(b) * T + p) * width,
                 x.begin() + (static_cast<size_t>(b) * T + p + 1) * width);
  return out;
}

struct RingCase {
  int B, T, C, H;
  SequenceLayout layout;
  int KV = 0;  // key/value heads; 0: H
};

void expect_ring_matches_whole(Communicator& sp, const RingCase& k) {
  const int B = k.B, T = k.T, C = k.C, H = k.H, Tl = T / sp.size();
  const int KV = k.KV > 0 ? k.KV : H, Ckv = KV * (C / H), width = C + 2 * Ckv;
  const auto be = kernels::cpu::make_cpu_backend();
  const std::vector<float> qkv = random_vector(static_cast<size_t>(B) * T * width, 5);
  const std::vector<float> dout = random_vector(static_cast<size_t>(B) * T * C, 6);
  std::vector<float> out(static_cast<size_t>(B) * T * C), lse(static_cast<size_t>(B) * H * T);
  std::vector<float> dqkv(qkv.size());
  std::vector<float> scratch(
      kernels::cpu::attention_scratch_floats(T, kernels::cpu::thread_count()));
  kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H, KV,
                                  scratch.data());
  kernels::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B,
                                   T, C, H, KV, scratch.data());

  const std::vector<int> positions = sequence_positions(k.layout, T, sp.size(), sp.rank());
  const std::vector<float> my_qkv = rows_at(qkv, positions, B, T, width);
  const std::vector<float> my_dout = rows_at(dout, positions, B, T, C);
  std::vector<float> work(ring_workspace_activations(B, Tl, C, Ckv));
  std::vector<float> block_lse(ring_workspace_lse_floats(B, Tl, H));
  std::vector<char> block_scratch(be->attention_block_scratch_bytes(B, H, Tl, Tl));
  const RingWorkspace ws =
      ring_workspace_at(*be, work.data(), block_lse.data(), block_scratch.data(), B, Tl, C, Ckv);

  RingAttention ring(&sp, k.layout);
  std::vector<float> my_out(static_cast<size_t>(B) * Tl * C),
      my_lse(static_cast<size_t>(B) * H * Tl);
  ring_attention_forward(ring, *be, ws, my_out.data(), my_lse.data(), my_qkv.data(), B, Tl, C, H,
                         KV);
  std::vector<float> my_dqkv(my_qkv.size());
  ring_attention_backward(ring, *be, ws, my_dqkv.data(), my_dout.data(), my_qkv.data(),
                          my_out.data(), my_lse.data(), B, Tl, C, H, KV);
  EXPECT_GT(ring.compute_seconds, 0.0);

  EXPECT_TRUE(same_values(my_out, rows_at(out, positions, B, T, C), "ring attention out", 1e-5));
  std::vector<float> want_lse;
  for (int bh = 0; bh < B * H; ++bh)
    for (int p : positions) want_lse.push_back(lse[static_cast<size_t>(bh) * T + p]);
  EXPECT_TRUE(same_values(my_lse, want_lse, "ring attention lse", 1e-5));
  EXPECT_TRUE(
      same_values(my_dqkv, rows_at(dqkv, positions, B, T, width), "ring attention dqkv", 1e-5));
}

// The whole sequence's attention of every head (out, lse, dqkv) from qkv and dout.
struct Whole {
  std::vector<float> out, lse, dqkv;
};
Whole whole_attention(const std::vector<float>& qkv, const std::vector<float>& dout, int B, int T,
                      int C, int H, int KV) {
  Whole w{std::vector<float>(static_cast<size_t>(B) * T * C),
          std::vector<float>(static_cast<size_t>(B) * H * T), std::vector<float>(qkv.size())};
  std::vector<float> scratch(
      kernels::cpu::attention_scratch_floats(T, kernels::cpu::thread_count()));
  kernels::cpu::attention_forward(w.out.data(), w.lse.data(), qkv.data(), B, T, C, H, KV,
                                  scratch.data());
  kernels::cpu::attention_backward(w.dqkv.data(), dout.data(), qkv.data(), w.out.data(),
                                   w.lse.data(), B, T, C, H, KV, scratch.data());
  return w;
}

void expect_ulysses_matches_whole(Communicator& sp, const RingCase& k) {
  const int B = k.B, T = k.T, C = k.C, H = k.H, S = sp.size(), Tl = T / S;
  const int KV = k.KV > 0 ? k.KV : H, Ckv = KV * (C / H), width = C + 2 * Ckv;
  const auto be = kernels::cpu::make_cpu_backend();
  const std::vector<float> qkv = random_vector(static_cast<size_t>(B) * T * width, 7);
  const std::vector<float> dout = random_vector(static_cast<size_t>(B) * T * C, 8);
  const Whole whole = whole_attention(qkv, dout, B, T, C, H, KV);
  const std::vector<int> positions = sequence_positions(k.layout, T, S, sp.rank());
  std::vector<float> my_qkv = rows_at(qkv, positions, B, T, width);
  const std::vector<float> my_dout = rows_at(dout, positions, B, T, C);
  std::vector<float> work(ulysses_workspace_activations(B, Tl, C, Ckv));
  std::vector<char> scratch(ulysses_scratch_bytes(*be, B, Tl, C, H, S));
  const UlyssesWorkspace ws = ulysses_workspace_at(*be, work.data(), scratch.data(), B, Tl, C, Ckv);
  UlyssesAttention u{&sp, k.layout};
  std::vector<float> my_out(static_cast<size_t>(B) * Tl * C),
      my_lse(static_cast<size_t>(B) * H * Tl), my_dqkv(my_qkv.size());
  ulysses_attention_forward(u, *be, ws, my_out.data(), my_lse.data(), my_qkv.data(), B, Tl, C, H,
                            KV);
  ulysses_attention_backward(u, *be, ws, my_dqkv.data(), my_dout.data(), my_qkv.data(),
                             my_out.data(), my_lse.data(), B, Tl, C, H, KV);
  EXPECT_TRUE(same_values(my_out, rows_at(whole.out, positions, B, T, C), "ulysses out", 1e-5));
  // The lse of this rank's head group (heads rank·H/S ..) over every position.
  std::vector<float> want_lse;
  for (int b = 0; b < B; ++b)
    for (int h = sp.rank() * H / S; h < (sp.rank() + 1) * H / S; ++h)
      for (int t = 0; t < T; ++t)
        want_lse.push_back(whole.lse[(static_cast<size_t>(b) * H + h) * T + t]);
  EXPECT_TRUE(same_values(my_lse, want_lse, "ulysses lse", 1e-5));
  EXPECT_TRUE(
      same_values(my_dqkv, rows_at(whole.dqkv, positions, B, T, width), "ulysses dqkv", 1e-5));
}

TEST(UlyssesAttention, MatchesWholeAttentionOverGroupsOf2And4) {
  ParallelTestContext& ctx = context();
  const int world = ctx.world->size(), rank = ctx.world->rank();
  for (int sp : {2, 4}) {
    if (sp > world) break;
    std::unique_ptr<Communicator> group =
        mpi_split(*ctx.mpi, "ulysses" + std::to_string(sp), rank / sp, rank);
    if (group->size() != sp) continue;  // heads must divide by the group
    for (const RingCase& k : {RingCase{2, 8 * sp, 16, 4, SequenceLayout::kZigzag},
                              RingCase{1, 4 * sp, 32, 4, SequenceLayout::kContiguous},
                              // Grouped-query: 8 query heads over 4 key/value heads.
                              RingCase{2, 8 * sp, 32, 8, SequenceLayout::kZigzag, 4}}) {
      SCOPED_TRACE("sp " + std::to_string(sp) + " T " + std::to_string(k.T));
      expect_ulysses_matches_whole(*group, k);
    }
  }
}

TEST(RingAttention, ZigzagPiecesAreBalancedAndCoverTheSequence) {
  const SequencePieces p = sequence_pieces(SequenceLayout::kZigzag, 16, 4, 1);
  ASSERT_EQ(p.size(), 2);
  EXPECT_EQ(p[0].position, 2);
  EXPECT_EQ(p[1].position, 12);
  EXPECT_EQ(p[1].row, 2);
  std::vector<int> seen(16, 0);
  for (int r = 0; r < 4; ++r)
    for (int pos : sequence_positions(SequenceLayout::kZigzag, 16, 4, r)) seen[pos]++;
  for (int s : seen) EXPECT_EQ(s, 1);
  const int global[2 * 8] = {0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17};
  int local[2 * 4];
  sequence_select(sequence_positions(SequenceLayout::kZigzag, 8, 2, 1), global, local, 2, 8);
  const int want[8] = {2, 3, 4, 5, 12, 13, 14, 15};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(local[i], want[i]) << i;
}

TEST(RingAttention, MatchesWholeAttentionOverGroupsOf2To4) {
  ParallelTestContext& ctx = context();
  const int world = ctx.world->size(), rank = ctx.world->rank();
  for (int sp = 2; sp <= 4; ++sp) {
    if (sp > world) break;
    // Groups of sp consecutive ranks; the remainder forms a smaller group.
    std::unique_ptr<Communicator> group =
        mpi_split(*ctx.mpi, "sp" + std::to_string(sp), rank / sp, rank);
    if (group->size() < 2) continue;
    const int n = group->size();
    for (const RingCase& k : {RingCase{2, 8 * n, 16, 2, SequenceLayout::kZigzag},
                              RingCase{1, 24 * n, 24, 3, SequenceLayout::kZigzag},
                              RingCase{2, 4 * n, 8, 1, SequenceLayout::kContiguous},
                              // Grouped-query: 4 query heads over 2 and over 1 key/value head.
                              RingCase{2, 8 * n, 16, 4, SequenceLayout::kZigzag, 2},
                              RingCase{1, 8 * n, 16, 4, SequenceLayout::kZigzag, 1}}) {
      SCOPED_TRACE("sp " + std::to_string(n) + " T " + std::to_string(k.T));
      expect_ring_matches_whole(*group, k);
    }
  }
}

}  // namespace
}  // namespace loom::test
