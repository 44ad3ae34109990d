#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/gelu.h"

namespace loom::kernels::cuda {
namespace {

// sqrt(2/π) and the cubic coefficient, as torch's tanh-approximate GELU spells them.
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr int kBlockSize = 256;

__device__ __forceinline__ float gelu(float x) {
  const float inner = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(inner));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float inner = kSqrt2OverPi * (x + kCubic * x * x * x);
  const float tanh_inner = tanhf(inner);
  const float sech_squared = 1.0f - tanh_inner * tanh_inner;
  const float dinner = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
  return 0.5f * (1.0f + tanh_inner) + 0.5f * x * sech_squared * dinner;
}

// Pointers may alias (out = inp, dinp = dout), so none is __restrict__; each element is read
// before the same thread writes it.
template <typename T>
__global__ void gelu_forward_scalar(T* out, const T* inp, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = from_float<T>(gelu(to_float(inp[i])));
  }
}

template <typename T>
__global__ void gelu_forward_packed(T* out, const T* inp, size_t packs) {
  using P = Pack<T>;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < packs;
       i += size_t{gridDim.x} * blockDim.x) {
    const P x = load_pack(inp + i * P::kSize);
    P y;
#pragma unroll
    for (int k = 0; k < P::kSize; k++) y.v[k] = from_float<T>(gelu(to_float(x.v[k])));
    store_pack(out + i * P::kSize, y);
  }
}

template <typename T>
__global__ void gelu_backward_scalar(T* dinp, const T* inp, const T* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    dinp[i] = from_float<T>(gelu_grad(to_float(inp[i])) * to_float(dout[i]));
  }
}

template <typename T>
__global__ void gelu_backward_packed(T* dinp, const T* inp, const T* dout, size_t packs) {
  using P = Pack<T>;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < packs;
       i += size_t{gridDim.x} * blockDim.x) {
    const P x = load_pack(inp + i * P::kSize);
    const P dy = load_pack(dout + i * P::kSize);
    P dx;
#pragma unroll
    for (int k = 0; k < P::kSize; k++) {
      dx.v[k] = from_float<T>(gelu_grad(to_float(x.v[k])) * to_float(dy.v[k]));
    }
    store_pack(dinp + i * P::kSize, dx);
  }
}

// One thread per (row, hidden unit) of the (N, F) output.
template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* inp, size_t total, int F) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t n = i / F, f = i % F;
    const float g = to_float(inp[n * 2 * F + f]);
    const float up = to_float(inp[n * 2 * F + F + f]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * up);
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t total, int F) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t n = i / F, f = i % F;
    const float g = to_float(inp[n * 2 * F + f]);
    const float up = to_float(inp[n * 2 * F + F + f]);
    const float d = to_float(dout[i]);
    const float sigmoid = 1.0f / (1.0f + expf(-g));
    dinp[n * 2 * F + f] = from_float<T>(d * up * sigmoid * (1.0f + g * (1.0f - sigmoid)));
    dinp[n * 2 * F + F + f] = from_float<T>(d * g * sigmoid);
  }
}

}  // namespace

template <typename T>
void swiglu_forward(const Context& ctx, T* out, const T* inp, int N, int F) {
  const size_t total = static_cast<size_t>(N) * F;
  if (total == 0) return;
  swiglu_forward_kernel<<<grid_stride_blocks(total, kBlockSize), kBlockSize, 0, ctx.stream>>>(
      out, inp, total, F);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void swiglu_backward(const Context& ctx, T* dinp, const T* inp, const T* dout, int N, int F) {
  const size_t total = static_cast<size_t>(N) * F;
  if (total == 0) return;
  swiglu_backward_kernel<<<grid_stride_blocks(total, kBlockSize), kBlockSize, 0, ctx.stream>>>(
      dinp, inp, dout, total, F);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void gelu_forward(const Context& ctx, T* out, const T* inp, size_t n) {
  if (n == 0) return;
  if (can_vectorize<T>(n, out, inp)) {
    const size_t packs = n / Pack<T>::kSize;
    gelu_forward_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        out, inp, packs);
  } else {
    gelu_forward_scalar<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(out, inp,
                                                                                          n);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void gelu_backward(const Context& ctx, T* dinp, const T* inp, const T* dout, size_t n) {
  if (n == 0) return;
  if (can_vectorize<T>(n, dinp, inp, dout)) {
    const size_t packs = n / Pack<T>::kSize;
    gelu_backward_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        dinp, inp, dout, packs);
  } else {
    gelu_backward_scalar<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        dinp, inp, dout, n);
  }
  CUDA_CHECK_LAUNCH();
}

template void gelu_forward<float>(const Context&, float*, const float*, size_t);
template void gelu_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                          size_t);
template void gelu_backward<float>(const Context&, float*, const float*, const float*, size_t);
template void gelu_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                           const __nv_bfloat16*, size_t);
template void swiglu_forward<float>(const Context&, float*, const float*, int, int);
template void swiglu_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                            int, int);
template void swiglu_backward<float>(const Context&, float*, const float*, const float*, int, int);
template void swiglu_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                             const __nv_bfloat16*, int, int);

}  // namespace loom::kernels::cuda
