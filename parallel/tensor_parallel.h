// Tensor parallelism's communication (Megatron; docs/architecture.md, "Where each parallel
// strategy lives"): a rank's place in its tp group, and the all-reduces that complete each
// sub-layer's partial sums. They are started async as soon as a partial sum is computed and
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

// Waits for and clears `work` (nothing when null); returns the seconds blocked, which are also
// added to sums.wait_seconds (exposed communication). Throws CommError if the sum failed.
double tp_wait(TensorParallelSums& sums, WorkPtr& work);

// Waits out and clears every sum still in flight, swallowing their errors: after a failure has
// been thrown to the caller, none may go on writing into buffers about to be reused.
void tp_drain(TensorParallelSums& sums);

}  // namespace loom
