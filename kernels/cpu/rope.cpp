#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstddef>

namespace loom::kernels::cpu {

void rope_table(float* cos, float* sin, int T, int hd, float theta, int first_position) {
  const int half = hd / 2;
  // Double because at t in the thousands the angle is thousands of radians, where a float
  // product is already ~1e-3 rad off; the table is made once, so the cost does not matter.
#pragma omp parallel for schedule(static)
  for (int t = 0; t < T; t++) {
    for (int d = 0; d < half; d++) {
      const double frequency = std::pow(static_cast<double>(theta), -2.0 * d / hd);
      const double angle = (static_cast<double>(first_position) + t) * frequency;
      cos[static_cast<size_t>(t) * half + d] = static_cast<float>(std::cos(angle));
      sin[static_cast<size_t>(t) * half + d] = static_cast<float>(std::sin(angle));
    }
  }
}

void rope_apply(float* qkv, const float* cos, const float* sin, int B, int T, int C, int H,
                int kv_heads, bool inverse) {
  const int hd = C / H;
  const size_t width = static_cast<size_t>(C) + 2 * static_cast<size_t>(kv_heads) * hd;
  const int half = hd / 2;
  // The inverse rotation is the rotation by −θ: same cos, negated sin.
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; bt++) {
    const int t = bt % T;
    const float* cos_t = cos + static_cast<size_t>(t) * half;
    const float* sin_t = sin + static_cast<size_t>(t) * half;
    float* row = qkv + static_cast<size_t>(bt) * width;
    // Heads of q then heads of k are contiguous: H + kv_heads heads of hd from the row start.
    for (int head = 0; head < H + kv_heads; head++) {
      float* x1 = row + static_cast<size_t>(head) * hd;
      float* x2 = x1 + half;
#pragma omp simd
      for (int d = 0; d < half; d++) {
        const float c = cos_t[d];
        const float s = sign * sin_t[d];
        const float a = x1[d];
        const float b = x2[d];
        x1[d] = a * c - b * s;
        x2[d] = b * c + a * s;
      }
    }
  }
}

}  // namespace loom::kernels::cpu
