// The CPU kernel backend: fp32 activations in host memory, forwarding to the kernels::cpu
// functions (OpenBLAS + OpenMP). Stateless apart from the process's thread count
// (kernels/cpu/threads.h), which sizes the attention scratch: plan with the count you compute with.
//
//   std::unique_ptr<loom::kernels::KernelBackend> cpu = loom::kernels::cpu::make_cpu_backend();
//   cpu->matmul_forward(out, inp, weight, bias, N, IC, OC);
#pragma once
#include <memory>

#include "kernels/backend.h"

namespace loom::kernels::cpu {

std::unique_ptr<KernelBackend> make_cpu_backend();
// bf16 activations (storage only: kernels/cpu/backend_bf16.cpp converts to fp32 and back around
// the fp32 kernels).
std::unique_ptr<KernelBackend> make_cpu_bf16_backend();

// `bytes` of zeroed host memory aligned to 64 bytes (at least one byte), for std::free. Throws
// std::bad_alloc.
void* allocate_host(size_t bytes);

}  // namespace loom::kernels::cpu
