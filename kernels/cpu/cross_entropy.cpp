#include "kernels/cpu/cross_entropy.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/fast_math.h"

namespace loom::kernels::cpu {

// Layout: the (chunk, V) logits block, then one loss per row of the chunk.
size_t lm_head_scratch_floats(int chunk, int V) {
  return static_cast<size_t>(chunk) * V + static_cast<size_t>(chunk);
}

double lm_head_cross_entropy(float* dx, float* dweight, const float* x, const float* weight,
                             const int* targets, int N, int C, int V, float grad_scale,
                             float* scratch, int chunk) {
  float* logits = scratch;
  float* row_loss = scratch + static_cast<size_t>(chunk) * V;
  double loss_sum = 0.0;
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int rows = std::min(chunk, N - n0);
    const float* x_chunk = x + static_cast<size_t>(n0) * C;
    // logits (rows, V) = x_chunk (rows, C) · weight (V, C)ᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.0f, x_chunk, C, weight, C,
                0.0f, logits, V);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
      float* row = logits + static_cast<size_t>(r) * V;
      const int target = targets[n0 + r];
      const float target_logit = row[target];
      // The row becomes exp(logit − max), ready to turn into dlogits.
      const RowExp e = row_exp(row, V);
      row_loss[r] = static_cast<float>(e.max + std::log(e.sum) - target_logit);
      if (dx == nullptr) continue;
      const float factor = static_cast<float>(grad_scale / e.sum);
#pragma omp simd
      for (int v = 0; v < V; v++) row[v] *= factor;
      row[target] -= grad_scale;
    }
    // Summed here, in row order, so the total does not depend on the thread count.
    for (int r = 0; r < rows; r++) loss_sum += row_loss[r];
    if (dx == nullptr) continue;
    // dx_chunk (rows, C) = dlogits (rows, V) · weight (V, C)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, V, 1.0f, logits, V, weight, C,
                0.0f, dx + static_cast<size_t>(n0) * C, C);
    // dweight (V, C) += dlogitsᵀ · x_chunk
    if (dweight != nullptr) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, rows, 1.0f, logits, V, x_chunk, C,
                  1.0f, dweight, C);
    }
  }
  return loss_sum;
}

void cross_entropy_local_max(float* row_max, const float* logits, int n, int Vl, int valid) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float* row = logits + static_cast<size_t>(i) * Vl;
    float max = -INFINITY;
#pragma omp simd reduction(max : max)
    for (int v = 0; v < valid; v++) max = row[v] > max ? row[v] : max;
    row_max[i] = max;
  }
}

void cross_entropy_local_sums(float* sums, const float* logits, const float* row_max,
                              const int* targets, int n, int Vl, int valid, int vocab_begin) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float* row = logits + static_cast<size_t>(i) * Vl;
    const float max = row_max[i];
    // Summed in double as row_exp does for the whole vocabulary, so a slice's Σ exp is exact to
    // float rounding however many columns it has.
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < valid; v++) sum += fast_exp(row[v] - max);
    const int target = targets[i] - vocab_begin;
    sums[2 * i] = static_cast<float>(sum);
    sums[2 * i + 1] = target >= 0 && target < valid ? row[target] : 0.0f;
  }
}

double cross_entropy_local_loss(const float* row_max, const float* sums, int n) {
  double total = 0.0;
  for (int i = 0; i < n; i++)
    total += static_cast<double>(row_max[i]) + std::log(static_cast<double>(sums[2 * i])) -
             sums[2 * i + 1];
  return total;
}

void cross_entropy_local_grad(float* logits, const float* row_max, const float* sums,
                              const int* targets, int n, int Vl, int valid, int vocab_begin,
                              float grad_scale) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    float* row = logits + static_cast<size_t>(i) * Vl;
    const float max = row_max[i];
    const float factor = grad_scale / sums[2 * i];
#pragma omp simd
    for (int v = 0; v < valid; v++) row[v] = fast_exp(row[v] - max) * factor;
    std::fill(row + valid, row + Vl, 0.0f);
    const int target = targets[i] - vocab_begin;
    if (target >= 0 && target < valid) row[target] -= grad_scale;
  }
}

}  // namespace loom::kernels::cpu
