#include "kernels/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>

namespace loom::kernels::cpu {
namespace {

// Columns one thread owns when reducing over rows: a cache line of floats, so threads never
// share a line and each column is summed in row order whatever the thread count.
constexpr int kColumnBlock = 16;

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC) {
  if (N == 0 || OC == 0) return;
  float beta = 0.0f;
  if (bias != nullptr) {
    // Seed out with the bias and let sgemm add onto it: one pass over out instead of two.
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + static_cast<size_t>(n) * OC);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, beta,
              out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  if (N == 0) return;
  if (dinp != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC,
                0.0f, dinp, IC);
  }
  if (dweight != nullptr)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f,
                dweight, IC);
  if (dbias == nullptr) return;
  const int blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int block = 0; block < blocks; block++) {
    const int c0 = block * kColumnBlock;
    const int width = std::min(kColumnBlock, OC - c0);
    double sum[kColumnBlock] = {};  // double: N can be tens of thousands of rows
    for (int n = 0; n < N; n++) {
      const float* row = dout + static_cast<size_t>(n) * OC + c0;
#pragma omp simd
      for (int c = 0; c < width; c++) sum[c] += row[c];
    }
    for (int c = 0; c < width; c++) dbias[c0 + c] += static_cast<float>(sum[c]);
  }
}

}  // namespace loom::kernels::cpu
