#include "kernels/cpu/routing.h"

#include <algorithm>
#include <cstddef>

namespace loom::kernels::cpu {

void gather_rows(float* dst, const float* src, const int* rows, const float* scale, int n, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float* x = src + static_cast<size_t>(rows[i]) * C;
    float* y = dst + static_cast<size_t>(i) * C;
    if (scale == nullptr) {
      std::copy_n(x, C, y);
      continue;
    }
    const float s = scale[i];
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = s * x[c];
  }
}

void scatter_add_rows(float* dst, const float* src, const int* rows, const float* scale,
                      float factor, int n, int C) {
  // Distinct rows: each dst row has one writer.
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float* x = src + static_cast<size_t>(i) * C;
    float* y = dst + static_cast<size_t>(rows[i]) * C;
    const float s = scale == nullptr ? factor : factor * scale[i];
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] += s * x[c];
  }
}

void row_dots(float* out, const float* a, const float* b, const int* rows, int n, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; i++) {
    const float* x = a + static_cast<size_t>(rows[i]) * C;
    const float* y = b + static_cast<size_t>(i) * C;
    double sum = 0.0;
    // The simd reduction's lane split is fixed at compile time: deterministic.
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) sum += static_cast<double>(x[c]) * y[c];
    out[i] = static_cast<float>(sum);
  }
}

}  // namespace loom::kernels::cpu
