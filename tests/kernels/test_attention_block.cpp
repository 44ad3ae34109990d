// The ring-attention blocks (kernels/cpu/attention_block.h) against whole causal attention
// (kernels/cpu/attention.h, itself checked against a double reference): each rank's zigzag part
// of the sequence attends block by block over every rank's keys, the partial results merged
// through their log-sum-exp, and the blocks' backward from the merged output and lse; the rows
// must match the whole attention's at the same global positions, forward and backward.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/threads.h"

namespace loom::kernels::test {
namespace {

struct RingShape {
  int B, T, C, H, sp;
};

void PrintTo(const RingShape& s, std::ostream* os) {
  *os << "B=" << s.B << " T=" << s.T << " C=" << s.C << " H=" << s.H << " sp=" << s.sp;
}

// Global position of local row `row` of sp rank r: chunks r and 2·sp − 1 − r of T / (2·sp).
int zigzag_position(const RingShape& s, int r, int row) {
  const int chunk = s.T / (2 * s.sp);
  return row < chunk ? r * chunk + row : (2 * s.sp - 1 - r) * chunk + row - chunk;
}

// Rank r's rows of a (B, T, width) tensor.
std::vector<float> local_rows(const std::vector<float>& x, const RingShape& s, int r, int width) {
  const int Tl = s.T / s.sp;
  std::vector<float> out(static_cast<size_t>(s.B) * Tl * width);
  for (int b = 0; b < s.B; b++)
    for (int t = 0; t < Tl; t++)
      for (int c = 0; c < width; c++)
        out[(static_cast<size_t>(b) * Tl + t) * width + c] =
            x[(static_cast<size_t>(b) * s.T + zigzag_position(s, r, t)) * width + c];
  return out;
}

// The block of rank r's half `qh` against rank k's half `kh` (each half one zigzag chunk),
// with q and kv packed qkv (B, Tl, 3C) tensors.
AttentionBlock half_block(const RingShape& s, int r, int qh, int k, int kh) {
  const int Tl = s.T / s.sp, chunk = Tl / 2, hd = s.C / s.H;
  AttentionBlock blk;
  blk.B = s.B, blk.H = s.H, blk.hd = hd;
  blk.q_len = Tl, blk.q_begin = qh * chunk, blk.q_rows = chunk, blk.q_ld = 3 * s.C;
  blk.kv_len = Tl, blk.kv_begin = kh * chunk, blk.kv_rows = chunk, blk.kv_ld = 3 * s.C;
  blk.v_offset = s.C;
  blk.causal = true;  // the positions decide: full, diagonal or nothing
  blk.q_position = zigzag_position(s, r, qh * chunk);
  blk.kv_position = zigzag_position(s, k, kh * chunk);
  return blk;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); i++)
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
  EXPECT_LE(worst, tol) << what;
}

class AttentionBlockTest : public ::testing::TestWithParam<RingShape> {};

TEST_P(AttentionBlockTest, ZigzagBlocksMatchWholeAttention) {
  const RingShape s = GetParam();
  const int Tl = s.T / s.sp, H = s.H;
  std::mt19937 rng(11 + s.sp);
  const std::vector<float> qkv = random_floats(rng, static_cast<size_t>(s.B) * s.T * 3 * s.C);
  const std::vector<float> dout = random_floats(rng, static_cast<size_t>(s.B) * s.T * s.C);

  std::vector<float> scratch(cpu::attention_scratch_floats(s.T, cpu::thread_count()));
  std::vector<float> out(static_cast<size_t>(s.B) * s.T * s.C),
      lse(static_cast<size_t>(s.B) * H * s.T);
  std::vector<float> dqkv(qkv.size());
  cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, H, H, scratch.data());
  cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                          s.C, H, H, scratch.data());

  std::vector<std::vector<float>> local_qkv, local_out, local_lse, local_dout;
  for (int r = 0; r < s.sp; r++) {
    local_qkv.push_back(local_rows(qkv, s, r, 3 * s.C));
    local_dout.push_back(local_rows(dout, s, r, s.C));
  }
  std::vector<float> block_scratch(cpu::attention_block_scratch_floats(Tl, cpu::thread_count()));
  const size_t out_n = static_cast<size_t>(s.B) * Tl * s.C,
               lse_n = static_cast<size_t>(s.B) * H * Tl;
  for (int r = 0; r < s.sp; r++) {
    std::vector<float> o(out_n, 0.0f), l(lse_n, -std::numeric_limits<float>::infinity());
    std::vector<float> bo(out_n), bl(lse_n);
    for (int k = 0; k < s.sp; k++)
      for (int qh = 0; qh < 2; qh++)
        for (int kh = 0; kh < 2; kh++) {
          const AttentionBlock blk = half_block(s, r, qh, k, kh);
          cpu::attention_block_forward(bo.data(), bl.data(), local_qkv[r].data(),
                                       local_qkv[k].data() + s.C, blk, block_scratch.data());
          cpu::attention_merge(o.data(), l.data(), bo.data(), bl.data(), blk);
        }
    expect_close(o, local_rows(out, s, r, s.C), 1e-5, "out");
    // lse (B, H, T): rank r's columns.
    std::vector<float> want_lse(lse_n);
    for (int bh = 0; bh < s.B * H; bh++)
      for (int t = 0; t < Tl; t++)
        want_lse[static_cast<size_t>(bh) * Tl + t] =
            lse[static_cast<size_t>(bh) * s.T + zigzag_position(s, r, t)];
    expect_close(l, want_lse, 1e-5, "lse");
    local_out.push_back(o);
    local_lse.push_back(l);
  }

  // Backward: query rank r's blocks add to its dq and to the key rank's dk, dv.
  std::vector<std::vector<float>> local_dqkv(s.sp, std::vector<float>(local_qkv[0].size(), 0.0f));
  for (int r = 0; r < s.sp; r++)
    for (int k = 0; k < s.sp; k++)
      for (int qh = 0; qh < 2; qh++)
        for (int kh = 0; kh < 2; kh++)
          cpu::attention_block_backward(
              local_dqkv[r].data(), local_dqkv[k].data() + s.C, local_dout[r].data(),
              local_qkv[r].data(), local_qkv[k].data() + s.C, local_out[r].data(),
              local_lse[r].data(), half_block(s, r, qh, k, kh), block_scratch.data());
  for (int r = 0; r < s.sp; r++)
    expect_close(local_dqkv[r], local_rows(dqkv, s, r, 3 * s.C), 1e-5, "dqkv");
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBlockTest,
                         ::testing::Values(RingShape{2, 16, 16, 2, 1}, RingShape{2, 32, 16, 2, 2},
                                           RingShape{1, 48, 24, 3, 3}, RingShape{2, 64, 32, 4, 4},
                                           RingShape{1, 256, 32, 2, 2}));

TEST(AttentionBlock, RowsThatSeeNoKeyAreEmptyAndMergeLeavesThem) {
  // A causal block whose keys all lie after the first query rows, kv in its own (B, T, 2C)
  // buffer: rows before the keys' first position see nothing.
  const int B = 1, T = 8, C = 4, H = 1;
  std::mt19937 rng(3);
  const std::vector<float> q = random_floats(rng, static_cast<size_t>(B) * T * C);
  const std::vector<float> kv = random_floats(rng, static_cast<size_t>(B) * T * 2 * C);
  AttentionBlock blk{B, H, C, T, 0, T, C, T, 0, T, 2 * C, C, true, 10, 13};
  std::vector<float> out(B * T * C, 7.0f), lse(B * H * T, 7.0f);
  std::vector<float> scratch(cpu::attention_block_scratch_floats(T, cpu::thread_count()));
  cpu::attention_block_forward(out.data(), lse.data(), q.data(), kv.data(), blk, scratch.data());
  for (int i = 0; i < T; i++) {
    EXPECT_EQ(blk.visible(i), std::max(0, std::min(T, i - 2)));
    if (blk.visible(i) == 0) {
      EXPECT_EQ(lse[i], -std::numeric_limits<float>::infinity()) << i;
      for (int d = 0; d < C; d++) EXPECT_EQ(out[i * C + d], 0.0f);
    } else {
      EXPECT_TRUE(std::isfinite(lse[i])) << i;
    }
  }
  std::vector<float> acc(B * T * C, 0.0f),
      acc_lse(B * H * T, -std::numeric_limits<float>::infinity());
  cpu::attention_merge(acc.data(), acc_lse.data(), out.data(), lse.data(), blk);
  for (size_t i = 0; i < acc.size(); i++) EXPECT_EQ(acc[i], out[i]);
  // Merging the same block twice doubles nothing: the weights are each ½.
  cpu::attention_merge(acc.data(), acc_lse.data(), out.data(), lse.data(), blk);
  for (size_t i = 0; i < acc.size(); i++) EXPECT_NEAR(acc[i], out[i], 1e-6);
  for (int i = 3; i < T; i++) EXPECT_NEAR(acc_lse[i], lse[i] + std::log(2.0f), 1e-5);
}

}  // namespace
}  // namespace loom::kernels::test
