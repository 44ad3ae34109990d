#include "kernels/cpu/embedding.h"

#include <algorithm>
#include <cstddef>

namespace loom::kernels::cpu {
namespace {

// Columns one thread owns in the dwte scatter: a cache line of floats, so threads never write
// to the same line.
constexpr int kColumnBlock = 16;

}  // namespace

void embedding_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, int vocab_begin, int vocab_rows) {
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    const int row = tokens[bt] - vocab_begin;
    float* y = out + static_cast<size_t>(bt) * C;
    if (row < 0 || row >= vocab_rows) {  // another rank's token
      if (wpe == nullptr)
        std::fill(y, y + C, 0.0f);
      else
        std::copy_n(wpe + static_cast<size_t>(bt % T) * C, C, y);
      continue;
    }
    const float* token_row = wte + static_cast<size_t>(row) * C;
    if (wpe == nullptr) {
      std::copy(token_row, token_row + C, y);
      continue;
    }
    const float* position_row = wpe + static_cast<size_t>(bt % T) * C;
#pragma omp simd
    for (int c = 0; c < C; c++) y[c] = token_row[c] + position_row[c];
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B,
                        int T, int C, int vocab_begin, int vocab_rows) {
  // Repeated tokens make the scatter a reduction. Splitting over columns instead of tokens
  // gives each dwte element one owner that adds its contributions in token order.
  const int blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
  for (int block = 0; block < blocks; block++) {
    const int c0 = block * kColumnBlock;
    const int width = std::min(kColumnBlock, C - c0);
    for (int bt = 0; bt < B * T; bt++) {
      const int row = tokens[bt] - vocab_begin;
      if (row < 0 || row >= vocab_rows) continue;
      float* dst = dwte + static_cast<size_t>(row) * C + c0;
      const float* src = dout + static_cast<size_t>(bt) * C + c0;
#pragma omp simd
      for (int c = 0; c < width; c++) dst[c] += src[c];
    }
  }
  if (dwpe == nullptr) return;

#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    // Each position's row has one owner, which sums the batch in order b = 0, 1, ...
    float* dst = dwpe + static_cast<size_t>(t) * C;
    for (int b = 0; b < B; b++) {
      const float* src = dout + (static_cast<size_t>(b) * T + t) * C;
#pragma omp simd
      for (int c = 0; c < C; c++) dst[c] += src[c];
    }
  }
}

}  // namespace loom::kernels::cpu
