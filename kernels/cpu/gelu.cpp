#include "kernels/cpu/gelu.h"

#include "kernels/cpu/fast_math.h"

namespace loom::kernels::cpu {
namespace {

// sqrt(2/π) and the cubic coefficient, as torch's tanh-approximate GELU spells them.
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

}  // namespace

void gelu_forward(float* out, const float* inp, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) {
    const float x = inp[i];
    const float inner = kSqrt2OverPi * (x + kCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + fast_tanh(inner));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) {
    const float x = inp[i];
    const float inner = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float tanh_inner = fast_tanh(inner);
    const float sech_squared = 1.0f - tanh_inner * tanh_inner;
    const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    const float grad = 0.5f * (1.0f + tanh_inner) + 0.5f * x * sech_squared * dinner;
    dinp[i] = grad * dout[i];
  }
}

void swiglu_forward(float* out, const float* inp, int N, int F) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* gate = inp + static_cast<size_t>(n) * 2 * F;
    const float* up = gate + F;
    float* o = out + static_cast<size_t>(n) * F;
#pragma omp simd
    for (int i = 0; i < F; i++) {
      const float g = gate[i];
      o[i] = g / (1.0f + fast_exp(-g)) * up[i];
    }
  }
}

void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float* gate = inp + static_cast<size_t>(n) * 2 * F;
    const float* up = gate + F;
    const float* d = dout + static_cast<size_t>(n) * F;
    float* d_gate = dinp + static_cast<size_t>(n) * 2 * F;
    float* d_up = d_gate + F;
#pragma omp simd
    for (int i = 0; i < F; i++) {
      const float g = gate[i];
      const float sigmoid = 1.0f / (1.0f + fast_exp(-g));
      d_gate[i] = d[i] * up[i] * sigmoid * (1.0f + g * (1.0f - sigmoid));
      d_up[i] = d[i] * g * sigmoid;
    }
  }
}

}  // namespace loom::kernels::cpu
