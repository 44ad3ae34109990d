// The NCCL backend of Communicator: collectives over device memory, for CUDA builds
// (LOOM_WITH_NCCL). Bootstrapped through the MPI communicator of the same group: group rank 0
// makes the NCCL unique id and broadcasts it over `bootstrap`; every member then joins.
//
// Invariants and what differs from the MPI backend:
// - Every pointer is device memory on this communicator's device. Operations run in order on one
//   communication stream that the communicator owns; each starts only after the work already
//   enqueued on `NcclOptions::input_stream` when it was issued (the compute stream).
// - A Work completes when the GPU has finished the operation. Each Work is an NcclWork:
//   `wait_on_stream(s)` orders stream s after the operation without blocking the host, the usual
//   way to consume a result; `wait()` blocks the host.
// - Ordering rule (as NCCL's): every member calls the group's collectives in the same order.
//   send/recv calls are collected and handed to NCCL together (one ncclGroupStart/End) when the
//   next collective is issued or any of their Works is queried, so a ring's recv + send issued
//   before waiting cannot deadlock on the single stream.
// - Reduce-scatter and all-gather with a count the group size does not divide are padded through
//   a device staging buffer (NCCL needs equal parts). It is allocated at creation
//   (`staging_bytes`) and grown only when an operation needs more — growing synchronises the
//   device, so size it at start-up for the largest uneven bucket to keep growth out of the step.
// - Failures (a CUDA or NCCL error, an asynchronous NCCL error, a timeout after `timeout_s`) abort
//   the NCCL communicator (ncclCommAbort) and are thrown as CommError from wait(), naming the
//   group, the operation, the failing call and where it was made. An aborted communicator fails
//   every later operation.
//
//   auto nccl = loom::nccl_communicator_create(*groups.tp, {.input_stream = compute_stream});
//   loom::WorkPtr w = nccl->all_reduce_async(d_out, n, loom::DataType::kFloat32,
//   loom::ReduceOp::kSum); loom::nccl_work_wait_on_stream(w, compute_stream);   // the next kernel
//   sees the sum
#pragma once
#include <cstddef>
#include <memory>

#include "parallel/communicator.h"

namespace loom {

struct FlightRecorder;

struct NcclOptions {
  double timeout_s = 300;        // parallel.collective_timeout_s
  int device = -1;               // CUDA device of every buffer; -1: the caller's current device
  void* input_stream = nullptr;  // cudaStream_t operations wait for; null: the legacy stream
  size_t staging_bytes = 0;      // initial staging for uneven reduce-scatter / all-gather
  // Records every operation (issued, enqueued on the stream, finished) under the group name
  // "<name>.nccl" when set; must outlive the communicator (parallel/flight_recorder.h).
  FlightRecorder* flight = nullptr;
};

// What every Work of an NCCL communicator is.
class NcclWork : public Work {
 public:
  // Makes `stream` (a cudaStream_t; null: the legacy default stream) wait until this operation
  // has finished on the GPU, without blocking the host. Throws CommError on a CUDA error.
  virtual void wait_on_stream(void* stream) = 0;
};

// wait_on_stream on a Work that an NCCL communicator returned (LOOM_CHECKed).
void nccl_work_wait_on_stream(const WorkPtr& work, void* stream);

// Collective over `bootstrap`'s group: every member calls it, in the same order as the group's
// other collectives. Throws loom::Error when a member has no usable CUDA device, CommError when
// NCCL cannot start.
std::unique_ptr<Communicator> nccl_communicator_create(Communicator& bootstrap,
                                                       const NcclOptions& options);

// CUDA devices visible to this process; 0 when there are none or no driver (never throws).
int cuda_device_count();

}  // namespace loom
