// Communication over a kernel backend's memory: with a transport that does not know the backend's
// stream (MPI over the CPU or the emulated device), and on a GPU with NCCL beside it.
//
// The kernels that write a buffer may still be queued when the caller starts an operation on it,
// and the memory may be closed to the host (kernels/emulated/backend.h). This communicator wraps
// another: before each operation it calls backend.lend_to_host() (which waits for the work issued
// so far and keeps the memory reachable), and its Work handles hold that lend until the operation
// has completed. Sizes, order rules and errors are the inner communicator's. On the CPU backend
// the lend is empty and costs a virtual call. With `sent_bytes` it also counts the payload of
// every operation this rank issues (an all-reduce's or broadcast's buffer, a reduce-scatter's
// input, an all-gather's own shard, a send; receives are the peer's), which is how a run
// reports what each group moved per step.
//
//   std::unique_ptr<loom::Communicator> tp = loom::make_device_communicator(std::move(mpi_tp), be);
//   loom::WorkPtr w = tp->all_reduce_async(h, n, loom::DataType::kFloat32, loom::ReduceOp::kSum);
//   w->wait();   // h's sum is in place; kernels queued from now on see it
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

// On a backend with a stream of its own (a GPU), a group of several ranks also gets an NCCL
// communicator over the same ranks, bootstrapped through `inner` (collective over the group, in
// the same order on every member; `timeout_s` is its collective timeout): buffers the backend
// calls device memory go through it, ordered after the backend's stream; host buffers (loss
// sums, flags, checkpoint pieces) still go through `inner`. Throws loom::Error when the build has
// no NCCL.
std::unique_ptr<Communicator> make_device_communicator(
    std::unique_ptr<Communicator> inner, std::shared_ptr<const kernels::KernelBackend> backend,
    std::shared_ptr<std::atomic<uint64_t>> sent_bytes = nullptr, double timeout_s = 300);

// The DataType of `be`'s activations (fp32 or bf16), for messages of activations.
DataType activation_data_type(const kernels::KernelBackend& be);

}  // namespace loom
