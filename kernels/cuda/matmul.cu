#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul.h"

namespace loom::kernels::cuda {
namespace {

// dbias columns per block and rows summed in parallel per column. 16 columns are one 32-byte
// sector of bf16 (two of float), so each row's read is a full sector; 64 row lanes give 1024
// threads per block.
constexpr int kBiasColumns = 16;
constexpr int kBiasRows = 64;

// dbias[c] += Σ_n dout[n, c]. Thread (x, y) sums rows y, y + 64, … of column c in double, then the
// 64 partial sums meet in a fixed tree: the same bits on every run, whatever the schedule.
template <typename T>
__global__ void __launch_bounds__(kBiasColumns* kBiasRows)
    bias_backward_kernel(float* dbias, const T* dout, int N, int OC) {
  __shared__ double partial[kBiasRows][kBiasColumns];
  const int x = threadIdx.x;
  const int y = threadIdx.y;
  const int c = blockIdx.x * kBiasColumns + x;
  double sum = 0.0;
  if (c < OC) {
    for (int n = y; n < N; n += kBiasRows) sum += to_float(dout[static_cast<size_t>(n) * OC + c]);
  }
  partial[y][x] = sum;
  __syncthreads();
  for (int stride = kBiasRows / 2; stride > 0; stride /= 2) {
    if (y < stride) partial[y][x] += partial[y + stride][x];
    __syncthreads();
  }
  if (y == 0 && c < OC) dbias[c] += static_cast<float>(partial[0][x]);
}

// out[n, o] = bias[o]: the seed for a GEMM with beta = 1 when the bias epilogue cannot be used.
template <typename T>
__global__ void broadcast_rows_kernel(T* out, const T* bias, int N, int OC) {
  const size_t total = static_cast<size_t>(N) * OC;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = bias[i % OC];
  }
}

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
int64_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  if (address == 0) return 256;
  return static_cast<int64_t>(std::min<uintptr_t>(address & (~address + 1), 256));
}

std::string describe(const Gemm& g) {
  return "M=" + std::to_string(g.M) + " N=" + std::to_string(g.N) + " K=" + std::to_string(g.K) +
         " lda=" + std::to_string(g.lda) + " ldb=" + std::to_string(g.ldb) +
         " ldd=" + std::to_string(g.ldd) + " trans_a=" + std::to_string(g.trans_a) +
         " trans_b=" + std::to_string(g.trans_b) + " ab_type=" + std::to_string(g.ab_type) +
         " d_type=" + std::to_string(g.d_type) + " bias=" + std::to_string(g.bias != nullptr);
}

// Queues g if cuBLASLt has an algorithm for it; returns false (queuing nothing) otherwise.
bool try_gemm(const Context& ctx, const Gemm& g, MatmulCache* cache) {
  // cuBLASLt is column-major. A row-major (r, c) matrix with row stride ld is the column-major
  // (c, r) matrix with the same ld, so d (M, N) row-major is dᵀ (N, M) column-major and
  //   dᵀ = op(b)ᵀ · op(a)ᵀ:
  // cuBLASLt's A is our b, its B our a, with m = N, n = M, k = K; a bias of length N is its
  // per-row bias.
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const uint64_t a_rows = g.trans_b ? g.K : g.N, a_cols = g.trans_b ? g.N : g.K;
  const uint64_t b_rows = g.trans_a ? g.M : g.K, b_cols = g.trans_a ? g.K : g.M;

  // The semi-opaque descriptors live on the stack: nothing to create or destroy.
  cublasLtMatmulDescOpaque_t desc_storage;
  cublasLtMatmulDesc_t desc = &desc_storage;
  CUBLAS_CHECK(cublasLtMatmulDescInit(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  const cublasLtEpilogue_t epilogue =
      g.bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                              sizeof(epilogue)));
  if (g.bias != nullptr) {
    // The bias vector has d's type: cuBLASLt's default (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = -1).
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                                sizeof(g.bias)));
  }

  cublasLtMatrixLayoutOpaque_t a_storage, b_storage, d_storage;
  cublasLtMatrixLayout_t a_layout = &a_storage, b_layout = &b_storage, d_layout = &d_storage;
  CUBLAS_CHECK(cublasLtMatrixLayoutInit(a_layout, g.ab_type, a_rows, a_cols, g.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutInit(b_layout, g.ab_type, b_rows, b_cols, g.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutInit(d_layout, g.d_type, g.N, g.M, g.ldd));

  const int64_t align_a = alignment_of(g.b), align_b = alignment_of(g.a);
  const int64_t align_d = alignment_of(g.d), align_bias = alignment_of(g.bias);
  const MatmulCache::Key key = {g.M,       g.N,       g.K,        g.lda,         g.ldb,    g.ldd,
                                g.trans_a, g.trans_b, g.ab_type,  g.d_type,      epilogue, align_a,
                                align_b,   align_d,   align_bias, g.beta != 0.0f};
  MatmulCache::Entry entry;
  const MatmulCache::Entry* cached = cache != nullptr ? cache->find(key) : nullptr;
  if (cached != nullptr) {
    entry = *cached;
  } else {
    cublasLtMatmulPreferenceOpaque_t preference_storage;
    cublasLtMatmulPreference_t preference = &preference_storage;
    CUBLAS_CHECK(cublasLtMatmulPreferenceInit(preference));
    const uint64_t workspace_bytes = ctx.workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference,
                                                      CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace_bytes, sizeof(workspace_bytes)));
    // Pointers into the middle of a buffer (a chunk of rows, a slice of parameters) can be less
    // aligned than the 256 bytes the heuristic assumes by default.
    const uint32_t alignments[3] = {static_cast<uint32_t>(align_a), static_cast<uint32_t>(align_b),
                                    static_cast<uint32_t>(align_d)};
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alignments[0], sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alignments[1], sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alignments[2], sizeof(uint32_t)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alignments[2], sizeof(uint32_t)));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        ctx.blas, desc, a_layout, b_layout, d_layout, d_layout, preference, 1, &result, &returned);
    // NOT_SUPPORTED is how cuBLASLt says "no algorithm"; anything else is a real error.
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(status);
    entry.found =
        status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (entry.found) entry.algo = result.algo;
    if (cache != nullptr) cache->insert(key, entry);
  }
  if (!entry.found) return false;
  CUBLAS_CHECK(cublasLtMatmul(ctx.blas, desc, &g.alpha, g.b, a_layout, g.a, b_layout, &g.beta, g.d,
                              d_layout, g.d, d_layout, &entry.algo, ctx.workspace,
                              ctx.workspace_bytes, ctx.stream));
  return true;
}

}  // namespace

const MatmulCache::Entry* MatmulCache::find(const Key& key) const {
  const auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

void MatmulCache::insert(const Key& key, const Entry& entry) { entries_[key] = entry; }

void gemm(const Context& ctx, const Gemm& g, MatmulCache* cache) {
  if (g.M == 0 || g.N == 0) return;
  if (!try_gemm(ctx, g, cache)) {
    throw CudaError("cuBLASLt has no algorithm for the GEMM " + describe(g));
  }
}

template <typename T>
void matmul_forward(const Context& ctx, T* out, const T* inp, const T* weight, const T* bias, int N,
                    int IC, int OC, MatmulCache* cache) {
  if (N == 0 || OC == 0) return;
  Gemm g;
  g.M = N;
  g.N = OC;
  g.K = IC;
  g.a = inp;
  g.lda = IC;
  g.b = weight;
  g.ldb = IC;
  g.trans_b = true;
  g.d = out;
  g.ldd = OC;
  g.ab_type = g.d_type = data_type_of<T>();
  if (bias != nullptr && reinterpret_cast<uintptr_t>(bias) % 16 == 0) {
    g.bias = bias;
    if (try_gemm(ctx, g, cache)) return;
    g.bias = nullptr;
  }
  if (bias != nullptr) {
    const size_t total = static_cast<size_t>(N) * OC;
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<size_t>((total + threads - 1) / threads, 4096));
    broadcast_rows_kernel<<<blocks, threads, 0, ctx.stream>>>(out, bias, N, OC);
    CUDA_CHECK_LAUNCH();
    g.beta = 1.0f;
  }
  gemm(ctx, g, cache);
}

template <typename T>
void matmul_backward(const Context& ctx, T* dinp, float* dweight, float* dbias, const T* dout,
                     const T* inp, const T* weight, int N, int IC, int OC, MatmulCache* cache) {
  if (N == 0) return;
  const cudaDataType_t type = data_type_of<T>();
  if (dinp != nullptr) {
    // dinp (N, IC) = dout (N, OC) · weight (OC, IC)
    Gemm g;
    g.M = N;
    g.N = IC;
    g.K = OC;
    g.a = dout;
    g.lda = OC;
    g.b = weight;
    g.ldb = IC;
    g.d = dinp;
    g.ldd = IC;
    g.ab_type = g.d_type = type;
    gemm(ctx, g, cache);
  }
  if (dweight != nullptr) {
    // dweight (OC, IC) += dout (N, OC)ᵀ · inp (N, IC), accumulated in the float buffer by beta = 1.
    Gemm g;
    g.M = OC;
    g.N = IC;
    g.K = N;
    g.a = dout;
    g.lda = OC;
    g.trans_a = true;
    g.b = inp;
    g.ldb = IC;
    g.d = dweight;
    g.ldd = IC;
    g.ab_type = type;
    g.d_type = CUDA_R_32F;
    g.beta = 1.0f;
    gemm(ctx, g, cache);
  }
  if (dbias != nullptr && OC > 0) {
    const dim3 block(kBiasColumns, kBiasRows);
    const int blocks = (OC + kBiasColumns - 1) / kBiasColumns;
    bias_backward_kernel<<<blocks, block, 0, ctx.stream>>>(dbias, dout, N, OC);
    CUDA_CHECK_LAUNCH();
  }
}

template void matmul_forward<float>(const Context&, float*, const float*, const float*,
                                    const float*, int, int, int, MatmulCache*);
template void matmul_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const __nv_bfloat16*,
                                            const __nv_bfloat16*, const __nv_bfloat16*, int, int,
                                            int, MatmulCache*);
template void matmul_backward<float>(const Context&, float*, float*, float*, const float*,
                                     const float*, const float*, int, int, int, MatmulCache*);
template void matmul_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*, float*, float*,
                                             const __nv_bfloat16*, const __nv_bfloat16*,
                                             const __nv_bfloat16*, int, int, int, MatmulCache*);

}  // namespace loom::kernels::cuda
