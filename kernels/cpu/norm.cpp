#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace loom::kernels::cpu {
namespace {

// Columns one thread owns when reducing parameter gradients over rows (see matmul.cpp).
constexpr int kColumnBlock = 16;

// Row statistics are accumulated in double: C is in the thousands and float sums of squares
// would lose the low bits that the variance is made of.
double row_mean(const float* x, int C) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; c++) sum += x[c];
  return sum / C;
}

double row_centered_mean_square(const float* x, double center, int C) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; c++) {
    const double d = x[c] - center;
    sum += d * d;
  }
  return sum / C;
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    // Two passes (mean, then centred squares) rather than E[x²] − E[x]², which cancels badly
    // for rows with a large mean.
    const double mu = row_mean(x, C);
    const double variance = row_centered_mean_square(x, mu, C);
    const float m = static_cast<float>(mu);
    const float r = static_cast<float>(1.0 / std::sqrt(variance + eps));
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * r * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = r;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  // dinp needs two reductions along each row, so it is parallel over rows.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* dy = dout + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    const float m = mean[n];
    const float r = rstd[n];
    double dnorm_sum = 0.0;
    double dnorm_norm_sum = 0.0;
#pragma omp simd reduction(+ : dnorm_sum, dnorm_norm_sum)
    for (int c = 0; c < C; c++) {
      const float norm = (x[c] - m) * r;
      const float dnorm = dy[c] * weight[c];
      dnorm_sum += dnorm;
      dnorm_norm_sum += dnorm * norm;
    }
    const float dnorm_mean = static_cast<float>(dnorm_sum / C);
    const float dnorm_norm_mean = static_cast<float>(dnorm_norm_sum / C);
#pragma omp simd
    for (int c = 0; c < C; c++) {
      const float norm = (x[c] - m) * r;
      const float dnorm = dy[c] * weight[c];
      dx[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
    }
  }

  // Parameter gradients sum over rows, so they are parallel over columns: each column is
  // summed in row order by one thread, which makes the result independent of thread timing.
  const int blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int block = 0; block < blocks; block++) {
    const int c0 = block * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    double dw[kColumnBlock] = {};
    double db[kColumnBlock] = {};
    for (int n = 0; n < N; n++) {
      const float* x = inp + static_cast<size_t>(n) * C + c0;
      const float* dy = dout + static_cast<size_t>(n) * C + c0;
      const float m = mean[n];
      const float r = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; c++) {
        dw[c] += dy[c] * ((x[c] - m) * r);
        db[c] += dy[c];
      }
    }
    for (int c = 0; c < width; c++) {
      dweight[c0 + c] += static_cast<float>(dw[c]);
      dbias[c0 + c] += static_cast<float>(db[c]);
    }
  }
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                     float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* x = inp + static_cast<size_t>(n) * C;
    float* y = out + static_cast<size_t>(n) * C;
    const double mean_square = row_centered_mean_square(x, 0.0, C);
    const float r = static_cast<float>(1.0 / std::sqrt(mean_square + eps));
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
    rstd[n] = r;
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* x = inp + static_cast<size_t>(n) * C;
    const float* dy = dout + static_cast<size_t>(n) * C;
    float* dx = dinp + static_cast<size_t>(n) * C;
    const float r = rstd[n];
    double dnorm_norm_sum = 0.0;
#pragma omp simd reduction(+ : dnorm_norm_sum)
    for (int c = 0; c < C; c++) dnorm_norm_sum += (dy[c] * weight[c]) * (x[c] * r);
    const float dnorm_norm_mean = static_cast<float>(dnorm_norm_sum / C);
#pragma omp simd
    for (int c = 0; c < C; c++) {
      dx[c] += (dy[c] * weight[c] - x[c] * r * dnorm_norm_mean) * r;
    }
  }

  // Parallel over columns for a timing-independent summation order (see layernorm_backward).
  const int blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int block = 0; block < blocks; block++) {
    const int c0 = block * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    double dw[kColumnBlock] = {};
    for (int n = 0; n < N; n++) {
      const float* x = inp + static_cast<size_t>(n) * C + c0;
      const float* dy = dout + static_cast<size_t>(n) * C + c0;
      const float r = rstd[n];
#pragma omp simd
      for (int c = 0; c < width; c++) dw[c] += dy[c] * (x[c] * r);
    }
    for (int c = 0; c < width; c++) dweight[c0 + c] += static_cast<float>(dw[c]);
  }
}

}  // namespace loom::kernels::cpu
