// The emulated device: the CPU kernels behind the KernelBackend interface, run the way a GPU runs
// them, so that the whole device code path (memory the host may not touch, asynchronous kernels,
// synchronisation points) is exercised where no GPU is. `runtime.device: EMULATED` selects it; it
// is a test device, not a fast one.
//
// - Memory is allocated apart from the host's. Under AddressSanitizer it is poisoned whenever the
//   device is idle and nothing has lent it to the host (KernelBackend::lend_to_host), so a host
//   read of device memory outside upload/download is an ASan error.
// - Kernels and copies run asynchronously, in issue order, on one worker thread (the stream): a
//   host read without the synchronisation a GPU needs can see stale values (a wrong result).
//   ThreadSanitizer checks the host, the stream and MPI's progress thread against each other, but
//   it sees copies and scalar accesses, not every vectorised kernel store, and only accesses that
//   no lock happens to order: the poisoning and the equivalence tests are the stronger checks.
// - upload, download, deallocate and the kernels that return a value wait for the stream.
//
//   auto be = loom::kernels::emulated::make_emulated_backend();
//   loom::kernels::DeviceArray<float> x(be, n);
//   x.upload(host);                       // host → device, waits
//   be->gelu_forward(x.data(), x.data(), n);   // queued
//   x.download(host.data(), n);           // waits for the kernel, then copies
#pragma once
#include <memory>

#include "kernels/backend.h"

namespace loom::kernels::emulated {

// The device runs `cpu`'s kernels (a CPU backend: fp32 by default, or bf16).
std::shared_ptr<KernelBackend> make_emulated_backend(std::shared_ptr<const KernelBackend> cpu = nullptr);

// Whether this build poisons device memory (AddressSanitizer is on).
bool poisons_memory();

}  // namespace loom::kernels::emulated
