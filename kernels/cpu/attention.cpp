#include "kernels/cpu/attention.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/threads.h"

namespace loom::kernels::cpu {
namespace {

// Query rows per block. A block [i0, i1) only needs keys [0, i1), so smaller blocks skip more
// of the masked upper triangle; 64 rows keep each sgemm large enough to run near peak.
constexpr int kRowBlock = 64;

// One thread's scratch: two (kRowBlock, T) score-shaped buffers, P and dP in backward; forward
// uses the second only for the kRowBlock softmax denominators.
size_t floats_per_thread(int T) { return 2 * static_cast<size_t>(kRowBlock) * T; }

// One (b, h) pair's view of the packed tensors. q, k, v rows are 3C apart in qkv (and dqkv),
// out and dout rows are C apart; sgemm reads the head in place through these strides.
struct Head {
  size_t q;    // offset of q[b, 0, h] in qkv; k is C further, v 2C further
  size_t out;  // offset of out[b, 0, h] in out and dout
  size_t lse;  // offset of lse[b, h, 0]
};

Head head_at(int pair, int T, int C, int H) {
  const size_t b = pair / H;
  const size_t h = pair % H;
  const size_t hd = C / H;
  return {b * T * 3 * C + h * hd, b * T * C + h * hd, static_cast<size_t>(pair) * T};
}

float* thread_scratch(float* scratch, int T) {
  return scratch + static_cast<size_t>(omp_get_thread_num()) * floats_per_thread(T);
}

}  // namespace

size_t attention_scratch_floats(int T, int threads) {
  return static_cast<size_t>(threads) * floats_per_thread(T);
}

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int H,
                       float* scratch) {
  const int hd = C / H;
  const int ld = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // num_threads ties the team to the thread_count() the caller sized scratch with. Each pair is
  // computed whole by one thread, so the dynamic schedule cannot change any result.
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count())
  for (int pair = 0; pair < B * H; pair++) {
    const Head head = head_at(pair, T, C, H);
    const float* q = qkv + head.q;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* p = thread_scratch(scratch, T);
    for (int i0 = 0; i0 < T; i0 += kRowBlock) {
      const int rows = std::min(kRowBlock, T - i0);
      const int keys = i0 + rows;  // causal: no row of this block sees a key past i0 + rows − 1
      // S (rows, keys) = scale · Q_blk K[0:keys]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale,
                  q + static_cast<size_t>(i0) * ld, ld, k, ld, 0.0f, p, keys);
      float* inv_sums = p + static_cast<size_t>(kRowBlock) * T;  // (rows), from the 2nd buffer
      for (int r = 0; r < rows; r++) {
        float* s = p + static_cast<size_t>(r) * keys;
        const int visible = i0 + r + 1;  // keys 0..i; the rest are masked to probability 0
        const RowExp e = row_exp(s, visible);
        std::fill(s + visible, s + keys, 0.0f);
        lse[head.lse + i0 + r] = e.max + static_cast<float>(std::log(e.sum));
        inv_sums[r] = static_cast<float>(1.0 / e.sum);
      }
      // O_blk (rows, hd) = P V[0:keys], written straight into out's head columns. P is left
      // unnormalised and each output row scaled after: hd multiplies per row instead of i + 1.
      float* o_blk = out + head.out + static_cast<size_t>(i0) * C;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, p, keys, v, ld,
                  0.0f, o_blk, C);
      for (int r = 0; r < rows; r++) {
        float* o_row = o_blk + static_cast<size_t>(r) * C;
#pragma omp simd
        for (int d = 0; d < hd; d++) o_row[d] *= inv_sums[r];
      }
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int H, float* scratch) {
  const int hd = C / H;
  const int ld = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for schedule(dynamic, 1) num_threads(thread_count())
  for (int pair = 0; pair < B * H; pair++) {
    const Head head = head_at(pair, T, C, H);
    const float* q = qkv + head.q;
    const float* k = q + C;
    const float* v = q + 2 * C;
    const float* o = out + head.out;
    const float* dout_head = dout + head.out;
    float* dq = dqkv + head.q;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    float* p = thread_scratch(scratch, T);
    float* dp = p + static_cast<size_t>(kRowBlock) * T;

    // dK and dV accumulate over row blocks; this pair alone owns these columns of dqkv, so
    // zeroing them here cannot race with another thread. dQ is written whole by beta = 0.
    for (int t = 0; t < T; t++) {
      std::memset(dk + static_cast<size_t>(t) * ld, 0, hd * sizeof(float));
      std::memset(dv + static_cast<size_t>(t) * ld, 0, hd * sizeof(float));
    }

    for (int i0 = 0; i0 < T; i0 += kRowBlock) {
      const int rows = std::min(kRowBlock, T - i0);
      const int keys = i0 + rows;
      const float* q_blk = q + static_cast<size_t>(i0) * ld;
      const float* dout_blk = dout_head + static_cast<size_t>(i0) * C;
      // Recompute P = exp(S − lse) instead of having stored it: O(T²) memory is what this
      // kernel exists to avoid.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, scale, q_blk, ld, k, ld,
                  0.0f, p, keys);
      // dP (rows, keys) = dO_blk V[0:keys]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, 1.0f, dout_blk, C, v, ld,
                  0.0f, dp, keys);
      for (int r = 0; r < rows; r++) {
        const int i = i0 + r;
        float* p_row = p + static_cast<size_t>(r) * keys;
        float* ds_row = dp + static_cast<size_t>(r) * keys;
        const float row_lse = lse[head.lse + i];
        // Σ_j P_ij dP_ij equals dO_i · O_i, which is cheaper (hd terms, not i + 1).
        const float* o_row = o + static_cast<size_t>(i) * C;
        const float* dout_row = dout_head + static_cast<size_t>(i) * C;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < hd; d++) dot += dout_row[d] * o_row[d];
        const int visible = i + 1;
#pragma omp simd
        for (int j = 0; j < visible; j++) p_row[j] = fast_exp(p_row[j] - row_lse);
#pragma omp simd
        for (int j = 0; j < visible; j++) ds_row[j] = p_row[j] * (ds_row[j] - dot) * scale;
        std::fill(p_row + visible, p_row + keys, 0.0f);
        std::fill(ds_row + visible, ds_row + keys, 0.0f);
      }
      // dQ_blk (rows, hd) = dS K[0:keys]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, dp, keys, k, ld,
                  0.0f, dq + static_cast<size_t>(i0) * ld, ld);
      // dK[0:keys] += dSᵀ Q_blk
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, 1.0f, dp, keys, q_blk,
                  ld, 1.0f, dk, ld);
      // dV[0:keys] += Pᵀ dO_blk
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hd, rows, 1.0f, p, keys, dout_blk,
                  C, 1.0f, dv, ld);
    }
  }
}

}  // namespace loom::kernels::cpu
