// CUDA ring-attention blocks (kernels/cuda/attention_block.h) against the CPU kernels
// (kernels/cpu/attention_block.h) on the same inputs (rounded to bf16 for the bf16 path): the
// zigzag blocks of every rank for sp = 2 and 3 — each block's forward, the chain of merges and
// the backward of every block accumulated on non-zero dq, dkv — over head dims 16, 32, 40, 64 and
// 128 and chunks that are not multiples of the tiles; a block with q and kv in buffers of their
// own, partial row ranges and rows that see no key (out 0, lse −∞, no gradient); the merge with
// −∞ on either side; copy_rows; bitwise determinism; rejected shapes.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/attention_block.h"
#include "kernels/cpu/attention_block.h"
#include "kernels/cpu/threads.h"
#include "kernels/cuda/attention_block.h"

namespace loom::kernels::cuda_test {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Results that pass through several bf16 roundings (a chain of merges, gradients added block
// after block) drift further from the fp32 CPU chain than one kernel's output.
template <typename T>
constexpr double accumulated_tolerance() {
  return sizeof(T) == sizeof(float) ? 1e-5 : 2e-2;
}

// lse compared where both are finite; where the reference is −∞ (a row that saw no key) the
// result must be −∞ too.
::testing::AssertionResult lse_close(const std::vector<float>& got, const std::vector<float>& want,
                                     double tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != reference size " << want.size();
  }
  std::vector<float> got_finite, want_finite;
  for (size_t i = 0; i < got.size(); i++) {
    if (want[i] == kNegInf) {
      if (got[i] != kNegInf) {
        return ::testing::AssertionFailure()
               << "element " << i << ": got " << got[i] << ", reference -inf";
      }
    } else {
      got_finite.push_back(got[i]);
      want_finite.push_back(want[i]);
    }
  }
  return norm_close(got_finite, want_finite, tol);
}

// The block's query rows (B, q_rows, width) of a (B, q_len, width) tensor.
std::vector<float> block_rows(const std::vector<float>& x, const AttentionBlock& blk, int width) {
  std::vector<float> out;
  for (int b = 0; b < blk.B; b++)
    for (int i = 0; i < blk.q_rows; i++) {
      const size_t row = static_cast<size_t>(b) * blk.q_len + blk.q_begin + i;
      out.insert(out.end(), x.begin() + row * width, x.begin() + (row + 1) * width);
    }
  return out;
}

// The block's query rows (B, H, q_rows) of an lse (B, H, q_len).
std::vector<float> block_lse_rows(const std::vector<float>& lse, const AttentionBlock& blk) {
  std::vector<float> out;
  for (int pair = 0; pair < blk.B * blk.H; pair++) {
    const size_t first = static_cast<size_t>(pair) * blk.q_len + blk.q_begin;
    out.insert(out.end(), lse.begin() + first, lse.begin() + first + blk.q_rows);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Zigzag layout, as in tests/kernels/test_attention_block.cpp: rank r of sp holds chunks r and
// 2·sp − 1 − r of T / (2·sp) rows, its (B, T / sp, 3C) qkv packed.

struct RingShape {
  int B, T, C, H, sp;
};

std::string describe(const RingShape& s) {
  return "B=" + std::to_string(s.B) + " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
         " H=" + std::to_string(s.H) + " hd=" + std::to_string(s.C / s.H) +
         " sp=" + std::to_string(s.sp);
}

const std::vector<RingShape> kRingShapes = {
    {2, 68, 48, 3, 2},    // hd 16, chunks of 17 rows: one past the 16-row blocks
    {2, 48, 64, 2, 3},    // hd 32, chunks of 8 rows
    {1, 102, 120, 3, 3},  // hd 40 (padded to 64), chunks of 17
    {1, 96, 128, 2, 2},   // hd 64, chunks of 24
    {1, 132, 256, 2, 2},  // hd 128, chunks of 33: two key tiles and a row past them
};

// Global position of local row `row` of rank r.
int zigzag_position(const RingShape& s, int r, int row) {
  const int chunk = s.T / (2 * s.sp);
  return row < chunk ? r * chunk + row : (2 * s.sp - 1 - r) * chunk + row - chunk;
}

// Rank r's half qh (a zigzag chunk) of queries against rank k's half kh of keys.
AttentionBlock half_block(const RingShape& s, int r, int qh, int k, int kh) {
  const int Tl = s.T / s.sp, chunk = Tl / 2;
  AttentionBlock blk;
  blk.B = s.B, blk.H = s.H, blk.hd = s.C / s.H;
  blk.q_len = Tl, blk.q_begin = qh * chunk, blk.q_rows = chunk, blk.q_ld = 3 * s.C;
  blk.kv_len = Tl, blk.kv_begin = kh * chunk, blk.kv_rows = chunk, blk.kv_ld = 3 * s.C;
  blk.v_offset = s.C;
  blk.causal = true;  // the positions decide: every key, the diagonal or none
  blk.q_position = zigzag_position(s, r, qh * chunk);
  blk.kv_position = zigzag_position(s, k, kh * chunk);
  return blk;
}

std::string describe(const AttentionBlock& blk) {
  return "block q_begin=" + std::to_string(blk.q_begin) +
         " kv_begin=" + std::to_string(blk.kv_begin) +
         " q_position=" + std::to_string(blk.q_position) +
         " kv_position=" + std::to_string(blk.kv_position);
}

// Every block of a ring: rank r's queries, rank k's keys, halves qh and kh.
struct RingBlock {
  int r, k;
  AttentionBlock blk;
};

std::vector<RingBlock> ring_blocks(const RingShape& s, int r) {
  std::vector<RingBlock> blocks;
  for (int k = 0; k < s.sp; k++)
    for (int qh = 0; qh < 2; qh++)
      for (int kh = 0; kh < 2; kh++) blocks.push_back({r, k, half_block(s, r, qh, k, kh)});
  return blocks;
}

template <typename T>
using AttentionBlockTest = CudaKernelTypedTest<T>;
TYPED_TEST_SUITE(AttentionBlockTest, ActivationTypes);

// Each rank's blocks forward (compared block by block) and merged into the rank's out and lse
// (compared after the last merge), the GPU merging its own block outputs.
TYPED_TEST(AttentionBlockTest, ZigzagForwardAndMergeMatchCpu) {
  using T = TypeParam;
  for (const RingShape& s : kRingShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    const int Tl = s.T / s.sp, C = s.C;
    const size_t qkv_n = static_cast<size_t>(s.B) * Tl * 3 * C;
    const size_t out_n = static_cast<size_t>(s.B) * Tl * C,
                 lse_n = static_cast<size_t>(s.B) * s.H * Tl;
    std::mt19937 rng(21 + s.sp);
    std::vector<std::vector<float>> qkv_host;
    std::vector<DeviceBuffer<T>> qkv;
    for (int r = 0; r < s.sp; r++) {
      qkv_host.push_back(as_type<T>(random_floats(rng, qkv_n, -2.0f, 2.0f)));
      qkv.emplace_back(this->ctx, qkv_host.back());
    }
    std::vector<float> cpu_scratch(cpu::attention_block_scratch_floats(Tl, cpu::thread_count()));

    for (int r = 0; r < s.sp; r++) {
      std::vector<float> want_out(out_n, 0.0f), want_lse(lse_n, kNegInf);
      std::vector<float> want_block_out(out_n), want_block_lse(lse_n);
      DeviceBuffer<T> out(this->ctx, want_out), block_out(this->ctx, out_n);
      DeviceBuffer<float> lse(this->ctx, want_lse), block_lse(this->ctx, lse_n);
      for (const RingBlock& rb : ring_blocks(s, r)) {
        SCOPED_TRACE("rank " + std::to_string(r) + " keys of rank " + std::to_string(rb.k) + " " +
                     describe(rb.blk));
        cpu::attention_block_forward(want_block_out.data(), want_block_lse.data(),
                                     qkv_host[r].data(), qkv_host[rb.k].data() + C, rb.blk,
                                     cpu_scratch.data());
        cpu::attention_merge(want_out.data(), want_lse.data(), want_block_out.data(),
                             want_block_lse.data(), rb.blk);

        block_out.poison();
        block_lse.poison();
        cuda::attention_block_forward<T>(this->ctx, block_out.data(), block_lse.data(),
                                         qkv[r].data(), qkv[rb.k].data() + C, rb.blk, nullptr);
        EXPECT_TRUE(norm_close(block_rows(block_out.download(), rb.blk, C),
                               block_rows(want_block_out, rb.blk, C), tolerance<T>()));
        // Inputs are identical on both sides, so lse differs by fp32 rounding only, for bf16 too.
        EXPECT_TRUE(lse_close(block_lse_rows(block_lse.download(), rb.blk),
                              block_lse_rows(want_block_lse, rb.blk), 1e-5));
        cuda::attention_merge<T>(this->ctx, out.data(), lse.data(), block_out.data(),
                                 block_lse.data(), rb.blk);
      }
      SCOPED_TRACE("rank " + std::to_string(r) + " merged");
      EXPECT_TRUE(norm_close(out.download(), want_out, accumulated_tolerance<T>()));
      EXPECT_TRUE(norm_close(lse.download(), want_lse, 1e-5));  // every row sees its own key
    }
  }
}

// Every block's backward, from the CPU's merged out (as T) and lse, accumulated on the GPU and
// on the CPU over the same non-zero starting dqkv: query rank r's blocks add to its dq and to the
// key rank's dk, dv.
TYPED_TEST(AttentionBlockTest, ZigzagBackwardMatchesCpu) {
  using T = TypeParam;
  for (const RingShape& s : kRingShapes) {
    SCOPED_TRACE(describe(s) + " " + type_name<T>());
    const int Tl = s.T / s.sp, C = s.C;
    const size_t qkv_n = static_cast<size_t>(s.B) * Tl * 3 * C;
    const size_t out_n = static_cast<size_t>(s.B) * Tl * C,
                 lse_n = static_cast<size_t>(s.B) * s.H * Tl;
    std::mt19937 rng(31 + s.sp);
    std::vector<float> cpu_scratch(cpu::attention_block_scratch_floats(Tl, cpu::thread_count()));
    std::vector<std::vector<float>> qkv_host, dout_host, out_host, lse_host, want_dqkv;
    for (int r = 0; r < s.sp; r++) {
      qkv_host.push_back(as_type<T>(random_floats(rng, qkv_n, -2.0f, 2.0f)));
      dout_host.push_back(as_type<T>(random_floats(rng, out_n)));
      want_dqkv.push_back(as_type<T>(random_floats(rng, qkv_n)));
    }
    for (int r = 0; r < s.sp; r++) {
      std::vector<float> out(out_n, 0.0f), lse(lse_n, kNegInf), block_out(out_n), block_lse(lse_n);
      for (const RingBlock& rb : ring_blocks(s, r)) {
        cpu::attention_block_forward(block_out.data(), block_lse.data(), qkv_host[r].data(),
                                     qkv_host[rb.k].data() + C, rb.blk, cpu_scratch.data());
        cpu::attention_merge(out.data(), lse.data(), block_out.data(), block_lse.data(), rb.blk);
      }
      out_host.push_back(as_type<T>(out));
      lse_host.push_back(lse);
    }

    std::vector<DeviceBuffer<T>> qkv, dout, out, dqkv;
    std::vector<DeviceBuffer<float>> lse;
    for (int r = 0; r < s.sp; r++) {
      qkv.emplace_back(this->ctx, qkv_host[r]);
      dout.emplace_back(this->ctx, dout_host[r]);
      out.emplace_back(this->ctx, out_host[r]);
      lse.emplace_back(this->ctx, lse_host[r]);
      dqkv.emplace_back(this->ctx, want_dqkv[r]);  // the starting values, before any block
    }
    DeviceBuffer<unsigned char> scratch(this->ctx,
                                        cuda::attention_block_scratch_bytes(s.B, s.H, Tl));
    scratch.poison();
    for (int r = 0; r < s.sp; r++) {
      for (const RingBlock& rb : ring_blocks(s, r)) {
        cpu::attention_block_backward(want_dqkv[r].data(), want_dqkv[rb.k].data() + C,
                                      dout_host[r].data(), qkv_host[r].data(),
                                      qkv_host[rb.k].data() + C, out_host[r].data(),
                                      lse_host[r].data(), rb.blk, cpu_scratch.data());
        cuda::attention_block_backward<T>(this->ctx, dqkv[r].data(), dqkv[rb.k].data() + C,
                                          dout[r].data(), qkv[r].data(), qkv[rb.k].data() + C,
                                          out[r].data(), lse[r].data(), rb.blk, scratch.data());
      }
    }
    for (int r = 0; r < s.sp; r++) {
      SCOPED_TRACE("rank " + std::to_string(r));
      EXPECT_TRUE(norm_close(dqkv[r].download(), want_dqkv[r], accumulated_tolerance<T>()));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One block over q (B, q_len, q_ld) and a kv (B, kv_len, 2C) of its own, with partial row ranges.

struct OwnBlockCase {
  const char* what;
  AttentionBlock blk;
};

AttentionBlock own_block(int B, int H, int hd, int q_len, int q_begin, int q_rows, int q_pad,
                         int kv_len, int kv_begin, int kv_rows, bool causal, int q_position,
                         int kv_position) {
  const int C = H * hd;
  AttentionBlock blk;
  blk.B = B, blk.H = H, blk.hd = hd;
  blk.q_len = q_len, blk.q_begin = q_begin, blk.q_rows = q_rows, blk.q_ld = C + q_pad;
  blk.kv_len = kv_len, blk.kv_begin = kv_begin, blk.kv_rows = kv_rows, blk.kv_ld = 2 * C;
  blk.v_offset = C;
  blk.causal = causal, blk.q_position = q_position, blk.kv_position = kv_position;
  return blk;
}

const std::vector<OwnBlockCase> kOwnBlocks = {
    // Rows 0–2 see no key (positions 10–12 before the first key's 13); hd 32.
    {"first rows see nothing", own_block(2, 2, 32, 48, 3, 37, 0, 50, 5, 40, true, 10, 13)},
    // hd 10 (padded to 16), rows 3 apart from the heads' end, three key tiles, the first rows
    // seeing a partial last tile.
    {"hd 10, three key tiles", own_block(1, 3, 10, 20, 0, 20, 3, 70, 0, 70, true, 100, 40)},
    {"full block, hd 128", own_block(1, 2, 128, 33, 1, 30, 0, 40, 2, 35, false, 0, 0)},
    // Every query before every key: out 0 and lse −∞ for all rows, no gradient.
    {"no row sees a key, hd 64", own_block(2, 1, 64, 40, 0, 40, 0, 40, 0, 40, true, 0, 50)},
};

size_t q_size(const AttentionBlock& blk) {
  return static_cast<size_t>(blk.B) * blk.q_len * blk.q_ld;
}
size_t kv_size(const AttentionBlock& blk) {
  return static_cast<size_t>(blk.B) * blk.kv_len * blk.kv_ld;
}
size_t out_size(const AttentionBlock& blk) {
  return static_cast<size_t>(blk.B) * blk.q_len * blk.H * blk.hd;
}
size_t lse_size(const AttentionBlock& blk) {
  return static_cast<size_t>(blk.B) * blk.H * blk.q_len;
}

// Forward over buffers that start as 7 everywhere (rows outside the block must keep it), then
// backward from that output on non-zero dq and dkv (their untouched parts must stay as they were).
TYPED_TEST(AttentionBlockTest, OwnKvBufferMatchesCpu) {
  using T = TypeParam;
  for (const OwnBlockCase& c : kOwnBlocks) {
    const AttentionBlock& blk = c.blk;
    const int C = blk.H * blk.hd;
    SCOPED_TRACE(std::string(c.what) + " " + type_name<T>());
    std::mt19937 rng(41);
    const std::vector<float> q_host = as_type<T>(random_floats(rng, q_size(blk), -2.0f, 2.0f));
    const std::vector<float> kv_host = as_type<T>(random_floats(rng, kv_size(blk), -2.0f, 2.0f));
    std::vector<float> want_out(out_size(blk), 7.0f), want_lse(lse_size(blk), 7.0f);
    std::vector<float> cpu_scratch(
        cpu::attention_block_scratch_floats(blk.kv_rows, cpu::thread_count()));
    cpu::attention_block_forward(want_out.data(), want_lse.data(), q_host.data(), kv_host.data(),
                                 blk, cpu_scratch.data());

    DeviceBuffer<T> q(this->ctx, q_host), kv(this->ctx, kv_host), out(this->ctx, want_out);
    DeviceBuffer<float> lse(this->ctx, want_lse);
    cuda::attention_block_forward<T>(this->ctx, out.data(), lse.data(), q.data(), kv.data(), blk,
                                     nullptr);
    const std::vector<float> got_out = out.download(), got_lse = lse.download();
    EXPECT_TRUE(norm_close(got_out, want_out, tolerance<T>()));
    EXPECT_TRUE(lse_close(got_lse, want_lse, 1e-5));
    for (int b = 0; b < blk.B; b++)
      for (int i = 0; i < blk.q_rows; i++) {
        if (blk.visible(i) > 0) continue;
        const size_t row = static_cast<size_t>(b) * blk.q_len + blk.q_begin + i;
        for (int h = 0; h < blk.H; h++) {
          EXPECT_EQ(got_lse[(static_cast<size_t>(b) * blk.H + h) * blk.q_len + blk.q_begin + i],
                    kNegInf)
              << "b " << b << " row " << i;
          for (int d = 0; d < blk.hd; d++)
            EXPECT_EQ(got_out[row * C + h * blk.hd + d], 0.0f) << "b " << b << " row " << i;
        }
      }

    // Backward, from the CPU's output (as T) and lse.
    const std::vector<float> out_host = as_type<T>(want_out);
    const std::vector<float> dout_host = as_type<T>(random_floats(rng, out_size(blk)));
    std::vector<float> want_dq = as_type<T>(random_floats(rng, q_size(blk)));
    std::vector<float> want_dkv = as_type<T>(random_floats(rng, kv_size(blk)));
    DeviceBuffer<T> dq(this->ctx, want_dq), dkv(this->ctx, want_dkv);
    DeviceBuffer<T> dout(this->ctx, dout_host), bwd_out(this->ctx, out_host);
    DeviceBuffer<float> bwd_lse(this->ctx, want_lse);
    DeviceBuffer<unsigned char> scratch(
        this->ctx, cuda::attention_block_scratch_bytes(blk.B, blk.H, blk.q_len));
    scratch.poison();
    cpu::attention_block_backward(want_dq.data(), want_dkv.data(), dout_host.data(), q_host.data(),
                                  kv_host.data(), out_host.data(), want_lse.data(), blk,
                                  cpu_scratch.data());
    cuda::attention_block_backward<T>(this->ctx, dq.data(), dkv.data(), dout.data(), q.data(),
                                      kv.data(), bwd_out.data(), bwd_lse.data(), blk,
                                      scratch.data());
    EXPECT_TRUE(norm_close(dq.download(), want_dq, tolerance<T>()));
    EXPECT_TRUE(norm_close(dkv.download(), want_dkv, tolerance<T>()));
  }
}

// Forward then backward on the GPU alone, twice: the same bits each time.
TYPED_TEST(AttentionBlockTest, IsDeterministic) {
  using T = TypeParam;
  const AttentionBlock blk = own_block(2, 3, 64, 70, 2, 66, 0, 90, 1, 85, true, 30, 10);
  std::mt19937 rng(51);
  DeviceBuffer<T> q(this->ctx, random_floats(rng, q_size(blk), -2.0f, 2.0f));
  DeviceBuffer<T> kv(this->ctx, random_floats(rng, kv_size(blk), -2.0f, 2.0f));
  DeviceBuffer<T> dout(this->ctx, random_floats(rng, out_size(blk)));
  const std::vector<float> dq_start = random_floats(rng, q_size(blk));
  const std::vector<float> dkv_start = random_floats(rng, kv_size(blk));
  DeviceBuffer<unsigned char> scratch(this->ctx,
                                      cuda::attention_block_scratch_bytes(blk.B, blk.H, blk.q_len));
  std::vector<std::vector<unsigned char>> outs, lses, dqs, dkvs;
  for (int run = 0; run < 2; run++) {
    DeviceBuffer<T> out(this->ctx, out_size(blk));
    DeviceBuffer<float> lse(this->ctx, lse_size(blk));
    DeviceBuffer<T> dq(this->ctx, dq_start), dkv(this->ctx, dkv_start);
    out.poison();
    lse.poison();
    cuda::attention_block_forward<T>(this->ctx, out.data(), lse.data(), q.data(), kv.data(), blk,
                                     nullptr);
    cuda::attention_block_backward<T>(this->ctx, dq.data(), dkv.data(), dout.data(), q.data(),
                                      kv.data(), out.data(), lse.data(), blk, scratch.data());
    outs.push_back(out.download_bytes());
    lses.push_back(lse.download_bytes());
    dqs.push_back(dq.download_bytes());
    dkvs.push_back(dkv.download_bytes());
    EXPECT_TRUE(all_finite(dq.download()));
    EXPECT_TRUE(all_finite(dkv.download()));
  }
  EXPECT_TRUE(bitwise_equal(outs[0], outs[1]));
  EXPECT_TRUE(bitwise_equal(lses[0], lses[1]));
  EXPECT_TRUE(bitwise_equal(dqs[0], dqs[1]));
  EXPECT_TRUE(bitwise_equal(dkvs[0], dkvs[1]));
}

// ---------------------------------------------------------------------------------------------
// The merge alone, on rows where the running lse, the block's lse or both are −∞.

TYPED_TEST(AttentionBlockTest, MergeMatchesCpu) {
  using T = TypeParam;
  const AttentionBlock blk = own_block(2, 3, 24, 21, 4, 13, 0, 0, 0, 0, false, 0, 0);
  std::mt19937 rng(61);
  const std::vector<float> out_host = as_type<T>(random_floats(rng, out_size(blk)));
  const std::vector<float> block_out_host = as_type<T>(random_floats(rng, out_size(blk)));
  std::vector<float> lse_host = random_floats(rng, lse_size(blk), -3.0f, 3.0f);
  std::vector<float> block_lse_host = random_floats(rng, lse_size(blk), -3.0f, 3.0f);
  for (size_t i = 0; i < lse_host.size(); i++) {
    if (i % 5 == 0) lse_host[i] = kNegInf;        // nothing seen yet: takes the block's result
    if (i % 7 == 0) block_lse_host[i] = kNegInf;  // the block adds nothing (both at i % 35 == 0)
  }
  std::vector<float> want_out = out_host, want_lse = lse_host;
  cpu::attention_merge(want_out.data(), want_lse.data(), block_out_host.data(),
                       block_lse_host.data(), blk);

  DeviceBuffer<T> out(this->ctx, out_host), block_out(this->ctx, block_out_host);
  DeviceBuffer<float> lse(this->ctx, lse_host), block_lse(this->ctx, block_lse_host);
  cuda::attention_merge<T>(this->ctx, out.data(), lse.data(), block_out.data(), block_lse.data(),
                           blk);
  EXPECT_TRUE(norm_close(out.download(), want_out, tolerance<T>()));
  EXPECT_TRUE(lse_close(lse.download(), want_lse, 1e-5));
}

// ---------------------------------------------------------------------------------------------
// copy_rows: a column range between tensors of different row lengths; exact.

TYPED_TEST(AttentionBlockTest, CopyRowsCopiesAColumnRange) {
  using T = TypeParam;
  const size_t rows = 37, cols = 29, src_ld = 50, dst_ld = 41, src_at = 7, dst_at = 5;
  std::mt19937 rng(71);
  const std::vector<float> src_host = as_type<T>(random_floats(rng, rows * src_ld));
  std::vector<float> want = as_type<T>(random_floats(rng, rows * dst_ld));
  DeviceBuffer<T> src(this->ctx, src_host), dst(this->ctx, want);
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++)
      want[dst_at + r * dst_ld + c] = src_host[src_at + r * src_ld + c];
  cuda::copy_rows<T>(this->ctx, dst.data() + dst_at, dst_ld, src.data() + src_at, src_ld, rows,
                     cols);
  EXPECT_EQ(dst.download(), want);
  EXPECT_THROW(cuda::copy_rows<T>(this->ctx, dst.data(), 10, src.data(), src_ld, rows, cols),
               std::invalid_argument);
}

TYPED_TEST(AttentionBlockTest, RejectsBadShapes) {
  using T = TypeParam;
  const AttentionBlock wide = own_block(1, 1, 129, 4, 0, 4, 0, 4, 0, 4, true, 0, 0);
  EXPECT_THROW(cuda::attention_block_forward<T>(this->ctx, nullptr, nullptr, nullptr, nullptr, wide,
                                                nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::attention_merge<T>(this->ctx, nullptr, nullptr, nullptr, nullptr, wide),
               std::invalid_argument);
  EXPECT_THROW(cuda::attention_block_backward<T>(this->ctx, nullptr, nullptr, nullptr, nullptr,
                                                 nullptr, nullptr, nullptr, wide, nullptr),
               std::invalid_argument);
  // Query rows past the end of the sequence.
  const AttentionBlock outside = own_block(1, 1, 16, 4, 2, 3, 0, 4, 0, 4, true, 0, 0);
  EXPECT_THROW(cuda::attention_block_forward<T>(this->ctx, nullptr, nullptr, nullptr, nullptr,
                                                outside, nullptr),
               std::invalid_argument);
}

}  // namespace
}  // namespace loom::kernels::cuda_test
