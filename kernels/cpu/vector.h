// Elementwise and reduction helpers over flat float buffers. Reductions are deterministic:
// fixed partition of the range, partial sums in double combined in a fixed order.
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// y (n) += x (n).
void vector_add(float* y, const float* x, size_t n);
// y (n) = a (n) + b (n). y may alias a or b.
void vector_sum(float* y, const float* a, const float* b, size_t n);
// Σ x².
double vector_sum_squares(const float* x, size_t n);
// True when no element is NaN or ±Inf.
bool vector_all_finite(const float* x, size_t n);

}  // namespace loom::kernels::cpu
