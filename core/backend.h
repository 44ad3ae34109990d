// The one place kernel backends are chosen: runtime.device and runtime.precision → a
// KernelBackend (kernels/backend.h). CPU, EMULATED (the CPU kernels behind a device's rules) and,
// in CUDA builds (LOOM_WITH_CUDA), CUDA: one GPU per rank, the node's local_rank-th.
//
//   std::shared_ptr<const kernels::KernelBackend> be = make_backend(cfg.runtime());
//   Model model = model_create(cfg.model(), be);
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "loom.pb.h"

namespace loom {

// The backend for runtime.device at runtime.precision; `local_rank` (this rank's index among the
// job's ranks on its node) picks the GPU. Throws loom::Error, saying why, for a device this build
// or this machine cannot run on (no CUDA in the build, no GPU, fewer GPUs than ranks on the node).
std::shared_ptr<const kernels::KernelBackend> make_backend(const config::RuntimeConfig& runtime,
                                                           int local_rank = 0);
// The fp32 CPU backend.
std::shared_ptr<const kernels::KernelBackend> make_cpu_backend();
// The CPU backend at runtime.precision, whatever the device: what planning sizes memory with
// (activation sizes depend on the precision only).
std::shared_ptr<const kernels::KernelBackend> make_host_backend(const config::RuntimeConfig& runtime);

}  // namespace loom
