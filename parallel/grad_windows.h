// ZeRO-2: the gradients live in windows instead of a whole-model buffer, and each window is
// reduce-scattered into this rank's shard as soon as backward reports it final, so no rank holds
// the whole gradient (docs/parallelism.md, "ZeRO-2: gradient windows").
//
// The flat parameter buffer is cut into units: the ranges the model reports final (a layer, the
// embedding, the head). A unit is either
//   - step-long: it accumulates over the whole step and is reduce-scattered once, when the step's
//     last micro-batch reports it final. The shared block's layers (every loop iteration adds to
//     them), the embedding and the head. Each has its own window for the whole run.
//   - per-micro-batch: a layer used at one place. Its window is taken from a few equal slots when
//     backward first writes to it, reduce-scattered (averaged) when its micro-batch reports it
//     final, and the slot is free again once the result is added into the shard.
// When the slots would be as large as the per-micro-batch units together, those are step-long too.
// Each rank owns shard_range of every unit; the shard keeps them compactly in unit order.
//
//   loom::GradWindowsPlan plan = loom::grad_windows_plan(units, slots, dp_sp.size(), dp_sp.rank());
//   loom::GradWindows w = loom::grad_windows_create(plan, dp_sp, backend, storage, shard,
//   received); loom::grad_windows_begin(w);                       // a step starts: step-long
//   windows zeroed float* g = loom::grad_windows_at(w, offset);       // where a tensor's gradients
//   accumulate loom::grad_windows_ready(w, offset, count);        // backward reports a range final
//   loom::grad_windows_finish(w);                      // shard = the step's averaged gradients
#pragma once
#include <cstddef>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

// A unit as the model describes it.
struct GradUnitSpec {
  ShardRange range;
  bool step_long = false;
};

struct GradUnit {
  ShardRange range;
  bool step_long = false;
  ShardRange own;           // this rank's shard_range of it (absolute)
  size_t compact = 0;       // where `own` starts in the shard
  size_t dedicated = 0;     // step-long: where its window starts in the storage
  float* window = nullptr;  // where its gradients are now (null: a closed per-micro-batch unit)
  int slot = -1;            // per-micro-batch: the slot it has open
  size_t ready = 0;         // step-long: gradients of this step reported final
  WorkPtr work;             // step-long: its reduce-scatter in flight
};

// What a rank allocates, in floats, as grad_windows_create cuts it: `loom plan` prints it and
// `loom train` allocates it.
struct GradWindowsPlan {
  std::vector<GradUnit> units;  // ascending, tiling the buffer
  size_t dedicated_floats = 0;  // the step-long units' windows
  int slots = 0;
  size_t slot_floats = 0;      // the largest per-micro-batch unit
  size_t received_floats = 0;  // per slot: the largest own part of a per-micro-batch unit
  size_t shard_floats = 0;     // Σ own
  size_t window_floats() const { return dedicated_floats + slots * slot_floats; }
};

// units: ascending and tiling [0, n). `slots` windows for per-micro-batch units (at least one
// more than can be open at once: backward keeps at most the model's delay open); 0: every unit
// step-long.
GradWindowsPlan grad_windows_plan(const std::vector<GradUnitSpec>& units, int slots, int parts,
                                  int rank);

struct GradSlot {
  int unit = -1;  // open or reducing for this unit (−1: free)
  WorkPtr work;   // its reduce-scatter in flight
};

struct GradWindows {
  GradWindowsPlan plan;
  Communicator* comm = nullptr;
  const kernels::KernelBackend* backend = nullptr;
  float* storage = nullptr;   // (window_floats): dedicated windows, then the slots
  float* shard = nullptr;     // (shard_floats) this rank's averaged gradients, compact
  float* received = nullptr;  // (slots · received_floats) a slot's reduce-scatter result
  std::vector<GradSlot> slots;
  std::vector<int> reducing;  // slots with a reduce-scatter in flight, oldest first
  bool last_micro = false;    // the backward now running is the step's last micro-batch's
  double wait_seconds = 0;    // time spent blocked on reductions this step
};

// The buffers are the caller's (backend memory of the plan's sizes); none is owned.
GradWindows grad_windows_create(const GradWindowsPlan& plan, Communicator& comm,
                                const kernels::KernelBackend& backend, float* storage, float* shard,
                                float* received);

// A step starts: the step-long windows and the shard are zeroed.
void grad_windows_begin(GradWindows& w);

// Where the gradient of flat offset `offset` accumulates: its unit's window, a per-micro-batch
// unit's opened (a free slot, zeroed; waiting for the oldest reduction if none is free).
float* grad_windows_at(GradWindows& w, size_t offset);

// Whether reporting the unit `range` final now reduces it: a step-long unit in the last
// micro-batch, a per-micro-batch unit while it is open. The model sums over tensor parallelism
// only what is reduced now.
bool grad_windows_reduces_now(const GradWindows& w, const ShardRange& range);

// Gradients [offset, offset + count) are final: a per-micro-batch unit's reduce-scatter starts
// (the whole unit at once); a step-long unit's once all its gradients are reported, in the last
// micro-batch.
void grad_windows_ready(GradWindows& w, size_t offset, size_t count);

// Waits for every reduction; afterwards `shard` holds this rank's part of the step's gradient,
// averaged over the group.
void grad_windows_finish(GradWindows& w);

// This rank's shards in compact order (the optimizer's owned ranges).
std::vector<ShardRange> grad_windows_owned(const GradWindowsPlan& plan);

// params[unit] ← every rank's updated shard of it, which each holds in place in params.
void grad_windows_gather_in_place(GradWindows& w, float* params);

}  // namespace loom
