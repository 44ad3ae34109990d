#include "core/backend.h"

#include "base/error.h"
#include "kernels/cpu/backend.h"
#include "kernels/emulated/backend.h"

namespace loom {

std::shared_ptr<const kernels::KernelBackend> make_cpu_backend() {
  return kernels::cpu::make_cpu_backend();
}

std::shared_ptr<const kernels::KernelBackend> make_host_backend(const config::RuntimeConfig& runtime) {
  if (runtime.precision() == config::RuntimeConfig::BF16) return kernels::cpu::make_cpu_bf16_backend();
  return kernels::cpu::make_cpu_backend();
}

std::shared_ptr<const kernels::KernelBackend> make_backend(const config::RuntimeConfig& runtime) {
  std::shared_ptr<const kernels::KernelBackend> cpu = make_host_backend(runtime);
  switch (runtime.device()) {
    case config::RuntimeConfig::CPU:
      return cpu;
    case config::RuntimeConfig::EMULATED:
      return kernels::emulated::make_emulated_backend(std::move(cpu));
    case config::RuntimeConfig::CUDA:
      break;
  }
  throw Error("runtime.device " + config::RuntimeConfig::Device_Name(runtime.device()) +
              " has no kernel backend in this build (set runtime.device=CPU)");
}

}  // namespace loom
