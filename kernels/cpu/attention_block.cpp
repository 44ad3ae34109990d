#include "kernels/cpu/attention_block.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/threads.h"

namespace loom::kernels::cpu {
namespace {

// Query rows per sgemm block, as in kernels/cpu/attention.cpp: a causal block's rows [i0, i1)
// need only the keys row i1 − 1 sees.
constexpr int kRowBlock = 64;

size_t floats_per_thread(int kv_rows) { return 2 * static_cast<size_t>(kRowBlock) * kv_rows; }

// One (b, h) pair's pointers into the block's tensors.
struct BlockHead {
  size_t q, kv, out, lse;  // q[row q_begin], k[row kv_begin], out[row q_begin], lse[row q_begin]
};

BlockHead block_head(const AttentionBlock& blk, int pair) {
  const size_t b = pair / blk.H, h = pair % blk.H, hd = blk.hd, C = blk.H * hd;
  const size_t g = blk.kv_head(static_cast<int>(h));
  return {(b * blk.q_len + blk.q_begin) * blk.q_ld + h * hd,
          (b * blk.kv_len + blk.kv_begin) * blk.kv_ld + g * hd,
          (b * blk.q_len + blk.q_begin) * C + h * hd,
          static_cast<size_t>(pair) * blk.q_len + blk.q_begin};
}

float* thread_scratch(float* scratch, int kv_rows) {
  return scratch + static_cast<size_t>(omp_get_thread_num()) * floats_per_thread(kv_rows);
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

size_t attention_block_scratch_floats(int kv_rows, int threads) {
  return static_cast<size_t>(threads) * floats_per_thread(kv_rows);
}

void attention_block_forward(float* out, float* lse, const float* q_all, const float* kv_all,
                             const AttentionBlock& blk, float* scratch) {
  const int hd = blk.hd, C = blk.H * blk.hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count())
  for (int pair = 0; pair < blk.B * blk.H; pair++) {
    const BlockHead head = block_head(blk, pair);
    const float* q = q_all + head.q;
    const float* k = kv_all + head.kv;
    const float* v = k + blk.v_offset;
    float* p = thread_scratch(scratch, blk.kv_rows);
    float* inv_sums = p + static_cast<size_t>(kRowBlock) * blk.kv_rows;
    for (int i0 = 0; i0 < blk.q_rows; i0 += kRowBlock) {
      const int rows = std::min(kRowBlock, blk.q_rows - i0);
      const int keys = blk.visible(i0 + rows - 1);  // the most any row of this block sees
      float* o_blk = out + head.out + static_cast<size_t>(i0) * C;
      if (keys == 0) {  // every row masked
        for (int r = 0; r < rows; r++) {
          std::fill_n(o_blk + static_cast<size_t>(r) * C, hd, 0.0f);
          lse[head.lse + i0 + r] = kNegInf;
        }
        continue;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale,
                  q + static_cast<size_t>(i0) * blk.q_ld, blk.q_ld, k, blk.kv_ld, 0.0f, p, keys);
      for (int r = 0; r < rows; r++) {
        float* s = p + static_cast<size_t>(r) * keys;
        const int visible = blk.visible(i0 + r);
        if (visible == 0) {
          std::fill(s, s + keys, 0.0f);
          lse[head.lse + i0 + r] = kNegInf;
          inv_sums[r] = 0.0f;
          continue;
        }
        const RowExp e = row_exp(s, visible);
        std::fill(s + visible, s + keys, 0.0f);
        lse[head.lse + i0 + r] = e.max + static_cast<float>(std::log(e.sum));
        inv_sums[r] = static_cast<float>(1.0 / e.sum);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, p, keys, v,
                  blk.kv_ld, 0.0f, o_blk, C);
      for (int r = 0; r < rows; r++) {
        float* o_row = o_blk + static_cast<size_t>(r) * C;
#pragma omp simd
        for (int d = 0; d < hd; d++) o_row[d] *= inv_sums[r];
      }
    }
  }
}

void attention_merge(float* out, float* lse, const float* block_out, const float* block_lse,
                     const AttentionBlock& blk) {
  const int hd = blk.hd, C = blk.H * blk.hd;
#pragma omp parallel for schedule(static) num_threads(thread_count())
  for (int pair = 0; pair < blk.B * blk.H; pair++) {
    const BlockHead head = block_head(blk, pair);
    for (int i = 0; i < blk.q_rows; i++) {
      const float l1 = lse[head.lse + i], l2 = block_lse[head.lse + i];
      if (l2 == kNegInf) continue;  // the block added nothing to this row
      float* o = out + head.out + static_cast<size_t>(i) * C;
      const float* bo = block_out + head.out + static_cast<size_t>(i) * C;
      if (l1 == kNegInf) {
        std::copy_n(bo, hd, o);
        lse[head.lse + i] = l2;
        continue;
      }
      const float hi = std::max(l1, l2);
      const float merged = hi + std::log(std::exp(l1 - hi) + std::exp(l2 - hi));
      const float w1 = std::exp(l1 - merged), w2 = std::exp(l2 - merged);
#pragma omp simd
      for (int d = 0; d < hd; d++) o[d] = w1 * o[d] + w2 * bo[d];
      lse[head.lse + i] = merged;
    }
  }
}

void attention_block_backward(float* dq_all, float* dkv_all, const float* dout, const float* q_all,
                              const float* kv_all, const float* out, const float* lse,
                              const AttentionBlock& blk, float* scratch) {
  const int hd = blk.hd, C = blk.H * blk.hd;
  const int kv_heads = blk.kv_head_count(), group = blk.H / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // One thread per (b, key/value head): the query heads sharing it run in turn, so its dK and
  // dV have one writer.
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count())
  for (int kv_pair = 0; kv_pair < blk.B * kv_heads; kv_pair++) {
    float* p = thread_scratch(scratch, blk.kv_rows);
    float* dp = p + static_cast<size_t>(kRowBlock) * blk.kv_rows;
    for (int member = 0; member < group; member++) {
      const int pair = (kv_pair / kv_heads) * blk.H + (kv_pair % kv_heads) * group + member;
      const BlockHead head = block_head(blk, pair);
      const float* q = q_all + head.q;
      const float* k = kv_all + head.kv;
      const float* v = k + blk.v_offset;
      float* dq = dq_all + head.q;
      float* dk = dkv_all + head.kv;
      float* dv = dk + blk.v_offset;
      for (int i0 = 0; i0 < blk.q_rows; i0 += kRowBlock) {
        const int rows = std::min(kRowBlock, blk.q_rows - i0);
        const int keys = blk.visible(i0 + rows - 1);
        if (keys == 0) continue;
        const float* q_blk = q + static_cast<size_t>(i0) * blk.q_ld;
        const float* dout_blk = dout + head.out + static_cast<size_t>(i0) * C;
        // P = exp(S − lse) with the merged lse is this block's part of the global softmax.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale, q_blk, blk.q_ld,
                    k, blk.kv_ld, 0.0f, p, keys);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, 1.0f, dout_blk, C, v,
                    blk.kv_ld, 0.0f, dp, keys);
        for (int r = 0; r < rows; r++) {
          float* p_row = p + static_cast<size_t>(r) * keys;
          float* ds_row = dp + static_cast<size_t>(r) * keys;
          const float row_lse = lse[head.lse + i0 + r];
          // Σ_j P_ij dP_ij over *all* keys (every block's) is dO_i · O_i of the merged output.
          const float* o_row = out + head.out + static_cast<size_t>(i0 + r) * C;
          const float* dout_row = dout_blk + static_cast<size_t>(r) * C;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < hd; d++) dot += dout_row[d] * o_row[d];
          const int visible = blk.visible(i0 + r);
#pragma omp simd
          for (int j = 0; j < visible; j++) p_row[j] = fast_exp(p_row[j] - row_lse);
#pragma omp simd
          for (int j = 0; j < visible; j++) ds_row[j] = p_row[j] * (ds_row[j] - dot) * scale;
          std::fill(p_row + visible, p_row + keys, 0.0f);
          std::fill(ds_row + visible, ds_row + keys, 0.0f);
        }
        // dQ_blk += dS K;  dK += dSᵀ Q_blk;  dV += Pᵀ dO_blk
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, dp, keys, k,
                    blk.kv_ld, 1.0f, dq + static_cast<size_t>(i0) * blk.q_ld, blk.q_ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, 1.0f, dp, keys, q_blk,
                    blk.q_ld, 1.0f, dk, blk.kv_ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, 1.0f, p, keys,
                    dout_blk, C, 1.0f, dv, blk.kv_ld);
      }
    }
  }
}

}  // namespace loom::kernels::cpu
