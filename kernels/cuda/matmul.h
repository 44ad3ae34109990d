// Dense layers on the GPU through cuBLASLt, with the API of kernels/cpu/matmul.h plus a Context.
// Weights are stored (OC, IC) as in torch.nn.Linear; all pointers are device pointers and every
// call is queued on ctx.stream (no allocation, no synchronisation).
//
//   MatmulCache cache;  // one per Context, owned by the caller
//   matmul_forward<__nv_bfloat16>(ctx, out, inp, weight, bias, N, IC, OC, &cache);
//   matmul_backward<__nv_bfloat16>(ctx, dinp, dweight, dbias, dout, inp, weight, N, IC, OC,
//                                  &cache);
//
// Precision: activations and weights are T (float or __nv_bfloat16); products accumulate in fp32
// (CUBLAS_COMPUTE_32F, never TF32, so the float path matches the CPU to fp32 rounding).
// Parameter gradients are float and accumulated.
//
// Algorithm choice: cublasLtMatmulAlgoGetHeuristic's first answer for the problem (shape, types,
// epilogue and the alignment of each pointer). With a MatmulCache the answer is looked up once per
// problem and reused; without one (cache == nullptr) the heuristic runs on every call. Either way
// the same problem always runs the same algorithm, so results are bitwise reproducible on one GPU
// model and library version.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>

#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

// Heuristic answers per GEMM problem. Not thread-safe: use one per Context (one stream), owned by
// whoever owns the Context. Holds no device resources; cheap to create and destroy.
class MatmulCache {
 public:
  using Key = std::array<int64_t, 16>;  // the problem, as built by gemm()
  struct Entry {
    bool found = false;  // false: cuBLASLt offered no algorithm for this problem
    cublasLtMatmulAlgo_t algo{};
  };
  // The stored answer for `key`, or null when the heuristic has not been asked yet.
  const Entry* find(const Key& key) const;
  void insert(const Key& key, const Entry& entry);
  size_t size() const { return entries_.size(); }

 private:
  std::map<Key, Entry> entries_;
};

// One GEMM in row-major terms, the building block of the functions below (and of the LM head):
//   d (M, N) = alpha · op(a) (M, K) · op(b) (K, N) + beta · d  [+ bias (N) broadcast over rows]
// a is stored row-major (M, K) with row stride lda, or (K, M) when trans_a; b is stored (K, N) with
// row stride ldb, or (N, K) when trans_b; d has row stride ldd. a and b have type ab_type, d (and
// bias) d_type; the supported pairs are (float, float), (bf16, bf16) and (bf16, float).
struct Gemm {
  int M = 0, N = 0, K = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  bool trans_a = false;
  const void* b = nullptr;
  int64_t ldb = 0;
  bool trans_b = false;
  void* d = nullptr;
  int64_t ldd = 0;
  cudaDataType_t ab_type = CUDA_R_32F;
  cudaDataType_t d_type = CUDA_R_32F;
  float alpha = 1.0f;
  float beta = 0.0f;           // 0: d is overwritten (its old contents are never read)
  const void* bias = nullptr;  // (N) of d_type, or null; needs 16-byte alignment for the epilogue
};

// Queues the GEMM on ctx.stream. Throws CudaError when cuBLASLt has no algorithm for it.
void gemm(const Context& ctx, const Gemm& gemm, MatmulCache* cache = nullptr);

// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC) — overwritten. bias may be null.
// The bias is added by cuBLASLt's BIAS epilogue when it is 16-byte aligned, otherwise it is
// broadcast into out first and the GEMM accumulates onto it (as the CPU kernel does).
template <typename T>
void matmul_forward(const Context& ctx, T* out, const T* inp, const T* weight, const T* bias, int N,
                    int IC, int OC, MatmulCache* cache = nullptr);

// dinp (N, IC) = dout (N, OC) · weight (OC, IC)  — overwritten; skipped when dinp is null
// dweight (OC, IC) += doutᵀ · inp                — accumulated (float); skipped when null
// dbias (OC) += Σ_n dout[n]                      — accumulated (float); skipped when dbias is null
// dbias is a column sum with a fixed reduction order (no atomics, no scratch): bitwise
// deterministic.
template <typename T>
void matmul_backward(const Context& ctx, T* dinp, float* dweight, float* dbias, const T* dout,
                     const T* inp, const T* weight, int N, int IC, int OC,
                     MatmulCache* cache = nullptr);

// The cuBLASLt data type of T.
template <typename T>
constexpr cudaDataType_t data_type_of();
template <>
constexpr cudaDataType_t data_type_of<float>() {
  return CUDA_R_32F;
}
template <>
constexpr cudaDataType_t data_type_of<__nv_bfloat16>() {
  return CUDA_R_16BF;
}

}  // namespace loom::kernels::cuda
