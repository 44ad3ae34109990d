// bfloat16 storage on the CPU: the upper 16 bits of an IEEE fp32, rounded to nearest even.
// The CPU computes in fp32; bf16 only halves what activations and messages take.
//
//   uint16_t h = loom::kernels::cpu::bf16_from_float(1.1f);   // 0x3F8D
//   float x = loom::kernels::cpu::bf16_to_float(h);            // 1.1015625
//   loom::kernels::cpu::bf16_store(out, fp32, n);              // n elements, OpenMP-parallel
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace loom::kernels::cpu {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// Round to nearest, ties to even; NaN stays NaN (quiet), ±Inf stays ±Inf.
inline uint16_t bf16_from_float(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// out (n) fp32 ← in (n) bf16; out (n) bf16 ← in (n) fp32.
void bf16_load(float* out, const void* in, size_t n);
void bf16_store(void* out, const float* in, size_t n);

}  // namespace loom::kernels::cpu
