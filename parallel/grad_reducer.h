// Data-parallel gradient reduction over a flat gradient buffer, in buckets that start reducing
// as soon as backward has produced all of their gradients, so communication overlaps the rest of
// backward; and, for ZeRO-1, the sharded variant: each rank receives the reduced gradients of
// its shard of every bucket, updates that shard, and the parameters are all-gathered afterwards.
//
// Buckets are cut from the end of the buffer backwards (backward produces the last layers'
// gradients first). Every rank of the group must call these functions in the same order; the
// model reports finished gradient ranges in the same order on every rank, so buckets launch in
// the same order everywhere.
//
//   loom::GradReducer red = loom::grad_reducer_create(*groups.dp_sp, grads, n, bucket, zero, true);
//   loom::grad_reducer_begin(red);                  // before the last micro-batch's backward
//   ... backward calls loom::grad_reducer_ready(red, offset, count) for each final range ...
//   loom::grad_reducer_finish(red);                 // every bucket reduced (averaged)
#pragma once
#include <cstddef>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

// parallel.grad_reduce_dtype BF16: buckets travel as the low-precision backend's activations
// (bf16). `gradients` holds n elements of backend->activation_bytes() (laid out as the fp32
// gradients), `shard` (ZeRO) as many as the fp32 shard; both backend memory, not owned.
struct GradWire {
  const kernels::KernelBackend* backend = nullptr;
  void* gradients = nullptr;
  void* shard = nullptr;
};

struct GradBucket {
  ShardRange range;       // in the flat buffer
  ShardRange own;         // ZeRO: this rank's shard of it (absolute); else the whole range
  size_t compact = 0;     // ZeRO: where `own` starts in the shard buffer
  size_t ready = 0;       // gradients of the current step reported final
  WorkPtr work;           // the reduction in flight
};

struct GradReducer {
  Communicator* comm = nullptr;
  float* grads = nullptr;           // (n) the flat gradient buffer
  size_t n = 0;
  bool zero = false;                // ZeRO-1: reduce-scatter into `shard`
  bool overlap = true;              // false: launch every bucket in finish()
  std::vector<GradBucket> buckets;  // in launch order: the buffer's end first
  // ZeRO: reduced gradients of this rank's shards, compact (the caller's memory, of the same
  // kind as grads; the reducer never dereferences either).
  float* shard = nullptr;
  GradWire wire;                    // backend null: buckets travel as fp32
  double wait_seconds = 0;          // time finish() blocked on communication (exposed)
};

// bucket_floats > 0. With zero, `shard` (not owned) has room for Σ own.size() floats, which
// grad_reducer_shard_floats gives beforehand.
// With wire.backend set, each bucket is rounded to the backend's activation type into
// wire.gradients when it launches, reduced in that type, and widened back into grads (or shard)
// by finish().
GradReducer grad_reducer_create(Communicator& comm, float* grads, size_t n, size_t bucket_floats,
                                bool zero, bool overlap, float* shard = nullptr,
                                GradWire wire = {});

// Floats of rank `rank`'s ZeRO shard (its `shard` buffer) over a group of `parts` ranks, as
// grad_reducer_create cuts the buckets: for planning memory without a communicator.
size_t grad_reducer_shard_floats(size_t n, size_t bucket_floats, int parts, int rank);

// The ranges of an n-float buffer that rank `rank` of `parts` owns under ZeRO, in compact order,
// as grad_reducer_create cuts the buckets: another stage's layout, known without its
// communicator.
std::vector<ShardRange> grad_reducer_owned_by(size_t n, size_t bucket_floats, int parts, int rank);

// Starts a step's reduction: no gradient is final yet.
void grad_reducer_begin(GradReducer& reducer);

// Gradients [offset, offset + count) are final for this step; launches the buckets this
// completes (when overlapping). Each gradient must be reported exactly once per step.
void grad_reducer_ready(GradReducer& reducer, size_t offset, size_t count);

// Launches what is left and waits for every bucket. Afterwards `grads` holds the group average
// (without ZeRO) or `shard` holds the average of this rank's shards (with ZeRO).
void grad_reducer_finish(GradReducer& reducer);

// This rank's shards in compact order (ZeRO), or the whole buffer as one range.
std::vector<ShardRange> grad_reducer_owned(const GradReducer& reducer);

// ZeRO: full ← every rank's `compact` values of each bucket (compact laid out as `shard`); how
// the sharded optimizer state is collected for a checkpoint.
void grad_reducer_gather(GradReducer& reducer, const float* compact, float* full);
// ZeRO: params[range] ← every rank's updated shard, which each rank holds in place in params.
void grad_reducer_gather_in_place(GradReducer& reducer, float* params);

}  // namespace loom
