#include "kernels/cpu/vector.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace loom::kernels::cpu {

void vector_add(float* y, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void vector_sum(float* y, const float* a, const float* b, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

double vector_sum_squares(const float* x, size_t n) {
  // A fixed number of partial sums on the stack: no allocation per call (this runs every step),
  // and a partition that depends only on n, so the result does not depend on the thread count.
  constexpr size_t kPartials = 256;
  std::array<double, kPartials> partial{};
  const size_t chunk = (n + kPartials - 1) / kPartials;
#pragma omp parallel for schedule(static)
  for (size_t p = 0; p < kPartials; p++) {
    const size_t begin = std::min(n, p * chunk);
    const size_t end = std::min(n, begin + chunk);
    double sum = 0.0;
    // The simd reduction's lane split is fixed at compile time, so it is deterministic too.
#pragma omp simd reduction(+ : sum)
    for (size_t i = begin; i < end; i++) sum += static_cast<double>(x[i]) * x[i];
    partial[p] = sum;
  }
  double total = 0.0;
  for (double sum : partial) total += sum;
  return total;
}

bool vector_all_finite(const float* x, size_t n) {
  // A count rather than an early exit: branch-free, so it vectorises, and integer sums are
  // exact in any order.
  size_t non_finite = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : non_finite)
  for (size_t i = 0; i < n; i++) non_finite += !std::isfinite(x[i]);
  return non_finite == 0;
}

}  // namespace loom::kernels::cpu
