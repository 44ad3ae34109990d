// Tensor parallelism's communication (Megatron; docs/architecture.md, "Where each parallel
// strategy lives"): a rank's place in its tp group, and the all-reduces that complete each
// sub-layer's partial sums (or, with sequence parallelism, the reduce-scatters and all-gathers
// that take their place). They are started async as soon as a partial sum is computed and
// waited on only when its result is first needed (at once with the standard residual, one
// sub-layer later with Ladder Residual), so each can hide behind compute. The sharding of
// parameters lives with the model (core/param_shards.h), the vocabulary-parallel head in
// parallel/vocab_parallel.h.
//
//   loom::TensorParallelSums sums;  sums.forward.resize(delay);
//   sums.forward[i % delay] = loom::tp_sum_start(tp, h, n);   // all-reduce of h (tp.type)
//   ...                                                       // the next sub-layer computes
//   loom::tp_wait(sums, sums.forward[i % delay]);             // h complete on every rank
#pragma once
#include <cstddef>
#include <vector>

#include "parallel/communicator.h"

namespace loom {

// This rank's place in the tensor-parallel group. comm is null when size is 1.
struct TensorParallel {
  int size = 1, rank = 0;
  Communicator* comm = nullptr;  // not owned
  DataType type = DataType::kFloat32;  // of the sums: the model's activations
  // parallel.tp_sequence_parallel (Korthikanti et al. 2022), size > 1 only: between the
  // tensor-parallel regions each rank holds rows [rank·N/size, (rank + 1)·N/size) of the N
  // tokens, so a partial sum is reduce-scattered into them instead of all-reduced, and a
  // region's input is all-gathered from them.
  bool sequence = false;
  // With sequence: the all-gathers' own communicator over the same ranks (null: comm), so that
  // a gather does not wait behind a reduce-scatter in flight. Not owned.
  Communicator* gather_comm = nullptr;
};

// The sums one model has in flight over its tp group: forward outputs and backward input
// gradients, one per pending slot of the residual schedule, and the time blocked on them.
struct TensorParallelSums {
  std::vector<WorkPtr> forward, backward;
  double wait_seconds = 0;  // accumulated; reset by the caller
};

// Starts completing the partial sum x (n elements of tp.type) over the group; null when tp.comm
// is null (nothing to complete).
WorkPtr tp_sum_start(const TensorParallel& tp, void* x, size_t n);

// Starts completing the partial sum `partial` (n elements of tp.type, N rows): all-reduced in
// place (out must be partial), or with tp.sequence reduce-scattered into `out`, this rank's
// n / size elements (its N / size rows). Null when tp.comm is null.
WorkPtr tp_complete_start(const TensorParallel& tp, void* partial, void* out, size_t n);

// Starts gathering every rank's rows into `full` (n elements) from this rank's n / size at
// `local` (which may be full's own place). tp.sequence only.
WorkPtr tp_gather_start(const TensorParallel& tp, const void* local, void* full, size_t n);

// Waits for and clears `work` (nothing when null); returns the seconds blocked, which are also
// added to sums.wait_seconds (exposed communication). Throws CommError if the sum failed.
double tp_wait(TensorParallelSums& sums, WorkPtr& work);

// Waits out and clears every sum still in flight, swallowing their errors: after a failure has
// been thrown to the caller, none may go on writing into buffers about to be reused.
void tp_drain(TensorParallelSums& sums);

}  // namespace loom
