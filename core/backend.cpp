#include "core/backend.h"

#include "core/error.h"
#include "kernels/cpu/backend.h"

namespace loom {

std::shared_ptr<const kernels::KernelBackend> make_backend(config::RuntimeConfig::Device device) {
  switch (device) {
    case config::RuntimeConfig::CPU:
      return kernels::cpu::make_cpu_backend();
    case config::RuntimeConfig::CUDA:
      break;
  }
  throw Error("runtime.device " + config::RuntimeConfig::Device_Name(device) +
              " has no kernel backend in this build (set runtime.device=CPU)");
}

}  // namespace loom
