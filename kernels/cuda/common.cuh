// Device helpers shared by the CUDA kernels (include from .cu files only): conversion between the
// activation type T (float or __nv_bfloat16) and fp32, 16-byte vector loads and stores,
// deterministic warp and block reductions, and launch-size helpers.
//
//   using P = Pack<T>;                                  // P::kSize elements of T in 16 bytes
//   if (can_vectorize<T>(n, out, inp)) { P x = load_pack(inp + i); ...; store_pack(out + i, x); }
//   const float total = block_sum(partial);             // every thread gets the same total
//
// Reductions here are deterministic: a fixed shuffle tree per warp and a fixed order across
// warps, so the same launch configuration over the same data gives bitwise identical results.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/check.h"

namespace loom::kernels::cuda {

// ---------------------------------------------------------------------------------------------
// Conversion to and from fp32. Conversions to bf16 round to nearest even.

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors: 4 floats or 8 bf16 moved with one 128-bit load or store.

constexpr int kVectorBytes = 16;

template <typename T>
struct alignas(kVectorBytes) Pack {
  static constexpr int kSize = kVectorBytes / static_cast<int>(sizeof(T));
  T v[kSize];
};

// p must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  Pack<T> out;
  *reinterpret_cast<int4*>(&out) = *reinterpret_cast<const int4*>(p);
  return out;
}
// Through the read-only data cache, for inputs that the kernel never writes.
template <typename T>
__device__ __forceinline__ Pack<T> load_pack_readonly(const T* p) {
  Pack<T> out;
  *reinterpret_cast<int4*>(&out) = __ldg(reinterpret_cast<const int4*>(p));
  return out;
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&x);
}

// kWidth consecutive elements as floats: one 16-byte load when kWidth is Pack<T>::kSize (p then
// 16-byte aligned), a plain load when kWidth is 1. Lets one kernel body serve both paths.
template <int kWidth, typename T>
__device__ __forceinline__ void load_as_float(const T* p, float (&out)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == Pack<T>::kSize, "kWidth is 1 or a whole pack");
  if constexpr (kWidth == 1) {
    out[0] = to_float(*p);
  } else {
    const Pack<T> x = load_pack(p);
#pragma unroll
    for (int k = 0; k < kWidth; k++) out[k] = to_float(x.v[k]);
  }
}
template <int kWidth, typename T>
__device__ __forceinline__ void store_from_float(T* p, const float (&in)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == Pack<T>::kSize, "kWidth is 1 or a whole pack");
  if constexpr (kWidth == 1) {
    *p = from_float<T>(in[0]);
  } else {
    Pack<T> x;
#pragma unroll
    for (int k = 0; k < kWidth; k++) x.v[k] = from_float<T>(in[k]);
    store_pack(p, x);
  }
}

// True when p is 16-byte aligned (null counts as aligned: an absent optional pointer).
inline bool is_aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

// True when a row (or flat range) of `count` elements of T can be walked in 16-byte packs from
// every pointer given: count is a multiple of Pack<T>::kSize and each pointer is aligned.
// For rows of a matrix pass the row length: then every row start is aligned too.
template <typename T, typename... Pointers>
bool can_vectorize(size_t count, const Pointers*... pointers) {
  if (count % Pack<T>::kSize != 0) return false;
  return (is_aligned16(pointers) && ...);
}

// ---------------------------------------------------------------------------------------------
// Reductions. All threads of the warp (block) must take part; each gets the full result.

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename V>
__device__ __forceinline__ V warp_sum(V x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

template <typename V>
__device__ __forceinline__ V warp_max(V x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const V other = __shfl_xor_sync(kFullMask, x, offset);
    x = other > x ? other : x;
  }
  return x;
}

// Sum over a 1-D block whose size is a multiple of 32 (at most 1024). Safe to call repeatedly in
// one kernel: it synchronises before reusing its shared buffer.
template <typename V>
__device__ __forceinline__ V block_sum(V x) {
  __shared__ V warp_totals[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  x = warp_sum(x);
  __syncthreads();  // a previous call may still be reading warp_totals
  if (lane == 0) warp_totals[warp] = x;
  __syncthreads();
  V total = lane < warps ? warp_totals[lane] : V(0);
  return warp_sum(total);
}

template <typename V>
__device__ __forceinline__ V block_max(V x, V lowest) {
  __shared__ V warp_maxima[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) warp_maxima[warp] = x;
  __syncthreads();
  V total = lane < warps ? warp_maxima[lane] : lowest;
  return warp_max(total);
}

// ---------------------------------------------------------------------------------------------
// Launch helpers (host).

__host__ __device__ constexpr inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// Streaming multiprocessors of the current device (a host attribute query: no synchronisation).
inline int multiprocessor_count() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  int count = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks for a grid-stride loop over `work` items with `per_block` items per block per pass:
// enough to fill the device a few times over, never more than the work needs, at least 1.
inline unsigned grid_stride_blocks(size_t work, size_t per_block) {
  const size_t needed = ceil_div(work, per_block);
  const size_t cap = static_cast<size_t>(multiprocessor_count()) * 8;
  const size_t blocks = needed < cap ? needed : cap;
  return static_cast<unsigned>(blocks > 0 ? blocks : 1);
}

}  // namespace loom::kernels::cuda
