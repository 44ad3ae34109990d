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

}  // namespace loom::kernels::cpu
