// What every CUDA kernel runs with: the stream it is queued on and the cuBLASLt handle and
// workspace its GEMMs use. Created once per rank and device; no kernel allocates memory or
// synchronises the device.
//
//   loom::kernels::cuda::Context ctx = loom::kernels::cuda::context_create(/*device=*/0);
//   loom::kernels::cuda::gelu_forward(ctx, out, inp, n);
//   CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

namespace loom::kernels::cuda {

struct StreamDeleter {
  void operator()(CUstream_st* stream) const { cudaStreamDestroy(stream); }
};
struct BlasLtDeleter {
  void operator()(cublasLtContext* handle) const { cublasLtDestroy(handle); }
};
struct DeviceDeleter {
  void operator()(void* p) const { cudaFree(p); }
};

// Device memory released exactly once.
using DeviceMemory = std::unique_ptr<void, DeviceDeleter>;
DeviceMemory device_alloc(size_t bytes);  // throws CudaError

struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;     // owned by `owned_stream`
  cublasLtHandle_t blas = nullptr;   // owned by `owned_blas`
  void* workspace = nullptr;         // cuBLASLt workspace, owned by `owned_workspace`
  size_t workspace_bytes = 0;
  std::unique_ptr<CUstream_st, StreamDeleter> owned_stream;
  std::unique_ptr<cublasLtContext, BlasLtDeleter> owned_blas;
  DeviceMemory owned_workspace;
};

// Number of usable CUDA devices; 0 when there is none or no driver (never throws).
int device_count();

// Selects `device`, creates a non-blocking stream, a cuBLASLt handle and a 32 MiB workspace.
Context context_create(int device);

}  // namespace loom::kernels::cuda
