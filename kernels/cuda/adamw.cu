#include <cmath>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"

namespace loom::kernels::cuda {
namespace {

constexpr int kBlockSize = 256;

// The step's scalar coefficients, formed on the host exactly as kernels/cpu/adamw.cpp forms them.
struct AdamwCoefficients {
  float decay;            // 1 − lr·wd
  float lerp_weight;      // 1 − β1
  float lerp_complement;  // 1 − lerp_weight
  bool small_weight;      // torch's lerp form switch at weight 0.5
  float beta2;
  float one_minus_beta2;
  float neg_step_size;          // −lr / (1 − β1ᵗ)
  float bias_correction2_sqrt;  // sqrt(1 − β2ᵗ)
  float eps;
  float grad_scale;
};

struct Updated {
  float p, m, v;
};

__device__ __forceinline__ Updated adamw_element(const AdamwCoefficients& k, float param,
                                                 float grad, float m, float v) {
  const float g = grad * k.grad_scale;
  const float p = param * k.decay;
  const float m_new =
      k.small_weight ? m + k.lerp_weight * (g - m) : g - (g - m) * k.lerp_complement;
  const float v_new = v * k.beta2 + k.one_minus_beta2 * g * g;
  const float denom = sqrtf(v_new) / k.bias_correction2_sqrt + k.eps;
  return {p + k.neg_step_size * m_new / denom, m_new, v_new};
}

__global__ void adamw_scalar(float* __restrict__ params, const float* __restrict__ grads,
                             float* __restrict__ m, float* __restrict__ v,
                             __nv_bfloat16* __restrict__ params_bf16, size_t n,
                             AdamwCoefficients k) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const Updated u = adamw_element(k, params[i], grads[i], m[i], v[i]);
    params[i] = u.p;
    m[i] = u.m;
    v[i] = u.v;
    if (params_bf16 != nullptr) params_bf16[i] = __float2bfloat16_rn(u.p);
  }
}

// Four bf16 values in one 8-byte store.
struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

__global__ void adamw_packed(float* __restrict__ params, const float* __restrict__ grads,
                             float* __restrict__ m, float* __restrict__ v,
                             __nv_bfloat16* __restrict__ params_bf16, size_t packs,
                             AdamwCoefficients k) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < packs;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t at = i * 4;
    Pack<float> p = load_pack(params + at);
    const Pack<float> g = load_pack_readonly(grads + at);
    Pack<float> pm = load_pack(m + at);
    Pack<float> pv = load_pack(v + at);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const Updated u = adamw_element(k, p.v[j], g.v[j], pm.v[j], pv.v[j]);
      p.v[j] = u.p;
      pm.v[j] = u.m;
      pv.v[j] = u.v;
    }
    store_pack(params + at, p);
    store_pack(m + at, pm);
    store_pack(v + at, pv);
    if (params_bf16 != nullptr) {
      Bf16x4 b;
      b.lo = __floats2bfloat162_rn(p.v[0], p.v[1]);
      b.hi = __floats2bfloat162_rn(p.v[2], p.v[3]);
      *reinterpret_cast<Bf16x4*>(params_bf16 + at) = b;
    }
  }
}

}  // namespace

void adamw_update(const Context& ctx, float* params, const float* grads, float* m, float* v,
                  size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                  long step, float grad_scale, __nv_bfloat16* params_bf16) {
  if (n == 0) return;
  const double lr_d = lr;
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(beta2), step);
  AdamwCoefficients k;
  k.decay = static_cast<float>(1.0 - lr_d * weight_decay);
  k.lerp_weight = static_cast<float>(1.0 - static_cast<double>(beta1));
  k.lerp_complement = 1.0f - k.lerp_weight;
  k.small_weight = std::abs(k.lerp_weight) < 0.5f;
  k.beta2 = beta2;
  k.one_minus_beta2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  k.neg_step_size = static_cast<float>(-(lr_d / bias_correction1));
  k.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  k.eps = eps;
  k.grad_scale = grad_scale;

  const bool bf16_aligned = reinterpret_cast<uintptr_t>(params_bf16) % sizeof(Bf16x4) == 0;
  if (n % 4 == 0 && bf16_aligned && can_vectorize<float>(n, params, grads, m, v)) {
    const size_t packs = n / 4;
    adamw_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        params, grads, m, v, params_bf16, packs, k);
  } else {
    adamw_scalar<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        params, grads, m, v, params_bf16, n, k);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace loom::kernels::cuda
