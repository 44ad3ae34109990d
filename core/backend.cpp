#include "core/backend.h"

#include <string>

#include "base/error.h"
#include "kernels/cpu/backend.h"
#include "kernels/emulated/backend.h"
#ifdef LOOM_WITH_CUDA
#include "kernels/cuda/backend.h"
#include "kernels/cuda/check.h"
#endif

namespace loom {
namespace {

// The GPU of the rank that is `local_rank`-th on its node: each rank has its own.
std::shared_ptr<const kernels::KernelBackend> make_cuda_backend(
    const config::RuntimeConfig& runtime, int local_rank) {
#ifdef LOOM_WITH_CUDA
  const int devices = kernels::cuda::cuda_devices();
  if (devices == 0)
    throw Error(
        "runtime.device CUDA: this process sees no CUDA device (no GPU, no driver, or "
        "CUDA_VISIBLE_DEVICES hides them); set runtime.device=CPU to train on the CPU");
  if (local_rank >= devices)
    throw Error(
        "runtime.device CUDA: this rank is number " + std::to_string(local_rank) +
        " on its node but the node shows " +
        (devices == 1 ? std::string("1 CUDA device") : std::to_string(devices) + " CUDA devices") +
        "; each rank needs its own GPU, so start at most " + std::to_string(devices) +
        " ranks per node");
  try {
    return kernels::cuda::make_cuda_backend(local_rank,
                                            runtime.precision() == config::RuntimeConfig::BF16);
  } catch (const kernels::cuda::CudaError& e) {
    throw Error("runtime.device CUDA: GPU " + std::to_string(local_rank) +
                " cannot be used: " + e.what());
  }
#else
  (void)runtime, (void)local_rank;
  throw Error(
      "runtime.device CUDA: this build of loom has no CUDA backend (nvcc was not found "
      "when it was configured, or LOOM_CUDA=OFF); rebuild with the CUDA Toolkit at "
      "/usr/local/cuda or set runtime.device=CPU");
#endif
}

}  // namespace

std::shared_ptr<const kernels::KernelBackend> make_cpu_backend() {
  return kernels::cpu::make_cpu_backend();
}

std::shared_ptr<const kernels::KernelBackend> make_host_backend(const config::RuntimeConfig& runtime) {
  if (runtime.precision() == config::RuntimeConfig::BF16) return kernels::cpu::make_cpu_bf16_backend();
  return kernels::cpu::make_cpu_backend();
}

std::shared_ptr<const kernels::KernelBackend> make_backend(const config::RuntimeConfig& runtime,
                                                           int local_rank) {
  switch (runtime.device()) {
    case config::RuntimeConfig::CPU:
      return make_host_backend(runtime);
    case config::RuntimeConfig::EMULATED:
      return kernels::emulated::make_emulated_backend(make_host_backend(runtime));
    case config::RuntimeConfig::CUDA:
      return make_cuda_backend(runtime, local_rank);
  }
  throw Error("runtime.device " + std::to_string(runtime.device()) + " is not a device loom knows");
}

}  // namespace loom
