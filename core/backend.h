// The one place kernel backends are chosen: runtime.device and runtime.precision → a
// KernelBackend (kernels/backend.h). A new backend (CUDA) is added here, under its build flag,
// and nowhere else.
//
//   std::shared_ptr<const kernels::KernelBackend> be = make_backend(cfg.runtime());
//   Model model = model_create(cfg.model(), be);
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "loom.pb.h"

namespace loom {

// The backend for runtime.device at runtime.precision. Throws loom::Error for a device this
// build cannot run on.
std::shared_ptr<const kernels::KernelBackend> make_backend(const config::RuntimeConfig& runtime);
// The fp32 CPU backend.
std::shared_ptr<const kernels::KernelBackend> make_cpu_backend();
// The CPU backend at runtime.precision, whatever the device: what planning sizes memory with
// (activation sizes depend on the precision only).
std::shared_ptr<const kernels::KernelBackend> make_host_backend(const config::RuntimeConfig& runtime);

}  // namespace loom
