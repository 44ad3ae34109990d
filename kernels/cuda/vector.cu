#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/vector.h"

namespace loom::kernels::cuda {
namespace {

constexpr int kBlockSize = 256;
// The reductions' fixed grid: a few waves on any current GPU, and fixed, so that the partition
// (and with it the rounding) never depends on the device.
constexpr int kReduceBlocks = 1024;
constexpr int kReduceThreads = 256;
constexpr int kFinalThreads = 1024;  // one thread per partial in the final pass
static_assert(kReduceBlocks == kFinalThreads, "the final pass reads one partial per thread");

// Pointers may alias, so none is __restrict__.
template <typename T>
__global__ void vector_add_scalar(T* y, const T* x, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(to_float(y[i]) + to_float(x[i]));
  }
}

template <typename T>
__global__ void vector_add_packed(T* y, const T* x, size_t packs) {
  using P = Pack<T>;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < packs;
       i += size_t{gridDim.x} * blockDim.x) {
    P a = load_pack(y + i * P::kSize);
    const P b = load_pack(x + i * P::kSize);
#pragma unroll
    for (int k = 0; k < P::kSize; k++) a.v[k] = from_float<T>(to_float(a.v[k]) + to_float(b.v[k]));
    store_pack(y + i * P::kSize, a);
  }
}

template <typename T>
__global__ void vector_sum_scalar(T* y, const T* a, const T* b, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
  }
}

template <typename T>
__global__ void vector_sum_packed(T* y, const T* a, const T* b, size_t packs) {
  using P = Pack<T>;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < packs;
       i += size_t{gridDim.x} * blockDim.x) {
    const P pa = load_pack(a + i * P::kSize);
    const P pb = load_pack(b + i * P::kSize);
    P out;
#pragma unroll
    for (int k = 0; k < P::kSize; k++) {
      out.v[k] = from_float<T>(to_float(pa.v[k]) + to_float(pb.v[k]));
    }
    store_pack(y + i * P::kSize, out);
  }
}

// Per-element contribution of a reduction and the type it is summed in.
struct SquareOp {
  using Acc = double;
  __device__ static double apply(float x) { return static_cast<double>(x) * x; }
};
struct NonFiniteOp {
  using Acc = unsigned long long;  // integer counts are exact in any order
  __device__ static unsigned long long apply(float x) { return isfinite(x) ? 0ull : 1ull; }
};

// partials[blockIdx.x] = Σ op(x[i]) over this block's grid-stride slice. Packs of 4 floats
// when `packed` (x aligned); the n % 4 tail is summed by the block with the next index.
template <typename Op>
__global__ void reduce_partials(typename Op::Acc* partials, const float* x, size_t n, bool packed) {
  using Acc = typename Op::Acc;
  Acc sum = 0;
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  const size_t first = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  size_t scalar_begin = 0;
  if (packed) {
    const size_t packs = n / 4;
    for (size_t i = first; i < packs; i += stride) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
      sum += Op::apply(v.x) + Op::apply(v.y) + Op::apply(v.z) + Op::apply(v.w);
    }
    scalar_begin = packs * 4;
  }
  for (size_t i = scalar_begin + first; i < n; i += stride) sum += Op::apply(x[i]);
  const Acc total = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void finish_sum_squares(double* result, const double* partials) {
  const double total = block_sum(partials[threadIdx.x]);
  if (threadIdx.x == 0) *result = total;
}

__global__ void finish_all_finite(int* result, const unsigned long long* partials) {
  const unsigned long long total = block_sum(partials[threadIdx.x]);
  if (threadIdx.x == 0) *result = total == 0 ? 1 : 0;
}

template <typename Dst, typename Src>
__global__ void vector_convert_kernel(Dst* dst, const Src* src, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    dst[i] = from_float<Dst>(to_float(src[i]));
  }
}

}  // namespace

template <typename Dst, typename Src>
void vector_convert(const Context& ctx, Dst* dst, const Src* src, size_t n) {
  if (n == 0) return;
  vector_convert_kernel<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(dst, src,
                                                                                          n);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void vector_add(const Context& ctx, T* y, const T* x, size_t n) {
  if (n == 0) return;
  if (can_vectorize<T>(n, y, x)) {
    const size_t packs = n / Pack<T>::kSize;
    vector_add_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(y, x,
                                                                                            packs);
  } else {
    vector_add_scalar<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(y, x, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void vector_sum(const Context& ctx, T* y, const T* a, const T* b, size_t n) {
  if (n == 0) return;
  if (can_vectorize<T>(n, y, a, b)) {
    const size_t packs = n / Pack<T>::kSize;
    vector_sum_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(y, a, b,
                                                                                            packs);
  } else {
    vector_sum_scalar<<<grid_stride_blocks(n, kBlockSize), kBlockSize, 0, ctx.stream>>>(y, a, b, n);
  }
  CUDA_CHECK_LAUNCH();
}

size_t vector_reduce_scratch_bytes() { return kReduceBlocks * sizeof(double); }

void vector_sum_squares(const Context& ctx, double* result, const float* x, size_t n,
                        void* scratch) {
  auto* partials = static_cast<double*>(scratch);
  reduce_partials<SquareOp>
      <<<kReduceBlocks, kReduceThreads, 0, ctx.stream>>>(partials, x, n, is_aligned16(x));
  CUDA_CHECK_LAUNCH();
  finish_sum_squares<<<1, kFinalThreads, 0, ctx.stream>>>(result, partials);
  CUDA_CHECK_LAUNCH();
}

void vector_all_finite(const Context& ctx, int* result, const float* x, size_t n, void* scratch) {
  auto* partials = static_cast<unsigned long long*>(scratch);
  reduce_partials<NonFiniteOp>
      <<<kReduceBlocks, kReduceThreads, 0, ctx.stream>>>(partials, x, n, is_aligned16(x));
  CUDA_CHECK_LAUNCH();
  finish_all_finite<<<1, kFinalThreads, 0, ctx.stream>>>(result, partials);
  CUDA_CHECK_LAUNCH();
}

template void vector_convert<__nv_bfloat16, float>(const Context&, __nv_bfloat16*, const float*,
                                                   size_t);
template void vector_convert<float, __nv_bfloat16>(const Context&, float*, const __nv_bfloat16*,
                                                   size_t);
template void vector_add<float>(const Context&, float*, const float*, size_t);
template void vector_add<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                        size_t);
template void vector_sum<float>(const Context&, float*, const float*, const float*, size_t);
template void vector_sum<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                        const __nv_bfloat16*, size_t);

}  // namespace loom::kernels::cuda
