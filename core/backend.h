// The one place kernel backends are chosen: runtime.device → a KernelBackend (kernels/backend.h).
// A new backend (CUDA) is added here, under its build flag, and nowhere else.
//
//   std::shared_ptr<const kernels::KernelBackend> be = make_backend(cfg.runtime().device());
//   Model model = model_create(cfg.model(), be);
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "loom.pb.h"

namespace loom {

// The backend for `device`. Throws loom::Error for a device this build cannot run on.
std::shared_ptr<const kernels::KernelBackend> make_backend(config::RuntimeConfig::Device device);

}  // namespace loom
