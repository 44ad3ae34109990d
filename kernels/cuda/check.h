// Checking every CUDA, cuBLASLt and cuDNN call (STYLE §6): a failure throws CudaError naming the
// call, the file and the line, so the caller can report it (kernels/ knows nothing of loom's
// error types).
//
//   CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx.stream));
//   CUBLAS_CHECK(cublasLtMatmul(...));
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace loom::kernels::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void cuda_check(cudaError_t code, const char* call, const char* file, int line) {
  if (code == cudaSuccess) return;
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")");
}

inline void cublas_check(cublasStatus_t code, const char* call, const char* file, int line) {
  if (code == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                  ": cuBLAS status " + std::to_string(static_cast<int>(code)));
}

}  // namespace loom::kernels::cuda

#define CUDA_CHECK(call) ::loom::kernels::cuda::cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) ::loom::kernels::cuda::cublas_check((call), #call, __FILE__, __LINE__)
// A kernel launch: checks the launch itself (bad configuration), not its execution.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
