// The CUDA kernel backend: the kernels of kernels/cuda/ behind kernels/backend.h, on one GPU and
// one stream, with fp32 or bf16 activations. Its memory is the GPU's (cudaMallocAsync on the
// stream): the host reaches it only through upload and download, and communicators move it with
// NCCL (parallel/device_communicator.h). Every kernel is queued on the stream; what returns a
// value (the loss, Σx²) copies that one scalar back and waits for it.
//
//   std::unique_ptr<loom::kernels::KernelBackend> gpu =
//       loom::kernels::cuda::make_cuda_backend(/*device=*/local_rank, /*bf16=*/true);
#pragma once
#include <memory>

#include "kernels/backend.h"

namespace loom::kernels::cuda {

// Selects `device` for this thread and creates the backend's stream and cuBLASLt context.
// Throws CudaError when the device cannot be used.
std::unique_ptr<KernelBackend> make_cuda_backend(int device, bool bf16);

// Usable CUDA devices; 0 when there is none or no driver (never throws).
int cuda_devices();

}  // namespace loom::kernels::cuda
