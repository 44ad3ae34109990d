#include "kernels/cuda/check.h"
#include "kernels/cuda/context.h"

namespace loom::kernels::cuda {

DeviceMemory device_alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes > 0) CUDA_CHECK(cudaMalloc(&p, bytes));
  return DeviceMemory(p);
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a missing driver
    return 0;
  }
  return count;
}

Context context_create(int device) {
  Context ctx;
  ctx.device = device;
  CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ctx.owned_stream.reset(stream);
  ctx.stream = stream;
  cublasLtHandle_t blas = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&blas));
  ctx.owned_blas.reset(blas);
  ctx.blas = blas;
  ctx.workspace_bytes = size_t{32} << 20;
  ctx.owned_workspace = device_alloc(ctx.workspace_bytes);
  ctx.workspace = ctx.owned_workspace.get();
  return ctx;
}

}  // namespace loom::kernels::cuda
