#include "kernels/cpu/vector.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace loom::kernels::cpu {
namespace {

// Reductions split the range into blocks of this many elements, independent of the thread
// count, so the partial sums and their order are the same on any machine.
constexpr size_t kReduceBlock = size_t{1} << 16;

}  // namespace

void vector_add(float* y, const float* x, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void vector_sum(float* y, const float* a, const float* b, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

double vector_sum_squares(const float* x, size_t n) {
  const size_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(blocks);
#pragma omp parallel for schedule(static)
  for (size_t block = 0; block < blocks; block++) {
    const size_t begin = block * kReduceBlock;
    const size_t end = std::min(n, begin + kReduceBlock);
    double sum = 0.0;
    // The simd reduction's lane split is fixed at compile time, so it is deterministic too.
#pragma omp simd reduction(+ : sum)
    for (size_t i = begin; i < end; i++) sum += static_cast<double>(x[i]) * x[i];
    partial[block] = sum;
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
