// exp and tanh that the compiler can vectorise. GCC turns std::exp / std::tanh inside a simd loop
// into one scalar libm call per element unless -ffast-math is on (glibc declares its vector
// variants only then), and those calls were a quarter of a small model's step. These inline
// versions use only arithmetic, rounding and bit operations, so `#pragma omp simd` loops
// vectorise them (kernels/CMakeLists.txt also compiles them with -fno-trapping-math, without
// which GCC keeps the clamps and std::floor scalar).
//
// exp: x = n·ln2 + r with |r| ≤ ln2/2, exp(r) by its degree-7 Taylor polynomial (truncation
// error below 6e-9 relative, under float's rounding), 2ⁿ built in the exponent bits. Inputs are
// clamped to [−87.3, 88.3] (results in the normal float range); NaN stays NaN.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace loom::kernels::cpu {

inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;     // ln 2 split so n·kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723e-6f;
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;  // n ≤ 127: 2ⁿ stays a finite float
  const float n = std::floor(x * kLog2e + 0.5f);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // A NaN x gives a NaN n, whose conversion to int is undefined: convert 0 instead (p is NaN,
  // so the result still is).
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23);
  return p * scale;
}

// tanh(x) = 1 − 2 / (e^{2x} + 1): saturates to ±1 for large |x|; absolute error ~1e-7, which
// is what GELU's 1 + tanh needs.
inline float fast_tanh(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

// The safe numerator and denominator of a softmax: replaces row (n) with exp(row − max(row))
// and returns the max and the sum of the exponentials (in double). The exponentials and the sum
// are separate loops so both vectorise; fused, the sum's dependency chain stalls every exp.
struct RowExp {
  float max;
  double sum;
};

inline RowExp row_exp(float* row, int n) {
  float max = row[0];
#pragma omp simd reduction(max : max)
  for (int j = 1; j < n; j++) max = row[j] > max ? row[j] : max;
#pragma omp simd
  for (int j = 0; j < n; j++) row[j] = fast_exp(row[j] - max);
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; j++) sum += row[j];
  return {max, sum};
}

}  // namespace loom::kernels::cpu
