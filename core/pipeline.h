// Running a pipeline schedule (parallel/pipeline_schedule.h) on this rank: each action's forward
// or backward of one micro-batch through one of the model's chunks, the boundary states and
// their gradients sent to and received from the neighbouring stages, activation slots and
// boundary buffers taken and given back (docs/architecture.md, "Pipeline parallelism").
//
// Receives are posted when the schedule says (one compute ahead, so transfers hide behind
// compute); a send is started right after its compute and waited on only when its buffer is
// needed again. A single-stage run goes through the same code with no communication.
//
//   loom::Pipeline pipe = loom::pipeline_create(layout, groups.pp.get(), groups.coord.pp);
//   loom::model_plan(model, B, T, pipe.slots, pipe.boundaries, pipe.split_backward);
//   double loss_sum = loom::pipeline_run(pipe, model, pipe.train, batch, true, on_final);
#pragma once
#include <memory>
#include <vector>

#include "core/memory_model.h"  // the memory model of the pipeline's stages
#include "core/model.h"
#include "core/parallel_layout.h"
#include "core/trace.h"
#include "loom.pb.h"
#include "parallel/communicator.h"
#include "parallel/flight_recorder.h"
#include "parallel/pipeline_schedule.h"

namespace loom {

struct Pipeline {
  Communicator* pp = nullptr;  // the pipeline group (size 1: a single stage)
  int rank = 0, size = 1;
  PipelineKind kind = PipelineKind::kOneFOneB;  // the schedule (parallel.pipeline_schedule)
  int micro_batches = 0;                 // per optimizer step on this rank
  std::vector<PipelineAction> train;     // this rank's training schedule
  int slots = 1, boundaries = 1;         // what model_plan must provide
  bool split_backward = false;           // zero-bubble: backward's weight gradients in a later pass
  // Activation slots: free ones, and the one each (micro-batch, chunk) in flight holds (−1:
  // none), at micro · chunks + chunk.
  std::vector<int> free_slots;
  std::vector<int> slot_of;
  int slots_held = 0, slots_peak = 0;    // now, and most at once since pipeline_create
  // Boundary buffers: free; receiving, with the receive's handle, at ((kind · micro-batches +
  // micro) · chunks + chunk) (kind 0: forward, 1: backward; buffer −1: none, −2: a receive from
  // this rank itself, see loopback); or sending, with the peer, oldest first. Sized for the
  // largest run so far: a step allocates nothing.
  std::vector<int> free_buffers;
  std::vector<std::pair<int, WorkPtr>> receiving;
  struct Sending {
    int buffer, peer;
    WorkPtr work;
  };
  std::vector<Sending> sending;
  // ZERO_BUBBLE_V's turn: the buffer this rank "sent" itself (chunk 0's output, chunk 1's input
  // gradient) for each receive, indexed as `receiving` (−1: none); the consuming compute takes it
  // over, no copy.
  std::vector<int> loopback;
  double wait_seconds = 0;               // blocked on transfers (exposed), reset by the caller
  TraceRecorder* trace = nullptr;        // optional
  FlightRecorder* flight = nullptr;      // optional: each compute marks its phase
};

// Micro-batches of (B, T) tokens stored one after the other.
struct MicroBatches {
  const int* inputs = nullptr;
  const int* targets = nullptr;
  int count = 0, B = 0, T = 0;
  float loss_grad_scale = 0.0f;  // > 0: training (the LM head prepares backward)
};

// This rank's schedules and the slot and buffer counts they need: micro-batches per step
// m = global_batch / (micro_batch · dp). pp may be null for a single stage. Throws loom::Error
// when m is too small for the schedule.
Pipeline pipeline_create(const ParallelLayout& layout, Communicator* pp, int rank);

// A single stage running m micro-batches one after the other (forward, backward): the step
// benchmark's and the parity tool's.
Pipeline pipeline_single(int micro_batches);

// Runs `actions` (pipe.train, or pipeline_forward_schedule for evaluation with backward false,
// which gives each micro-batch's slot back right after its forward). on_grads_final goes to the
// backward of the last micro-batch of each chunk. Returns the sum of the micro-batches' mean
// losses computed on this rank (the last stage; 0 elsewhere). Every transfer has completed when
// it returns.
double pipeline_run(Pipeline& pipe, Model& model, const std::vector<PipelineAction>& actions,
                    const MicroBatches& batch, bool backward, const GradsFinalFn& on_grads_final);

// Activation memory of this rank in bytes as planned (slots, boundary buffers, shared
// temporaries) and as used at the peak (slots held at most at once instead of all slots).
struct ActivationMemory {
  double planned = 0, peak = 0;
};
ActivationMemory pipeline_activation_memory(const Pipeline& pipe, const Model& model);

// The pipeline-rank sets that hold a replica of some tensor (the shared block on the stages that
// run it, a tied embedding on the first and last), over every stage, ascending: every rank gets
// the same list, so the groups for them are created in the same order everywhere.
std::vector<std::vector<int>> pipeline_replica_sets(const Model& model);

// One replica set's group; comm is null on a rank outside it.
struct ReplicaGroup {
  std::vector<int> holders;
  std::unique_ptr<Communicator> comm;
};

// Summing the gradients of replicated tensors across the stages holding them, during the step's
// last backward: each range's all-reduce starts as soon as its gradients are final here, in one
// order every holder shares (descending global tensor index), so it overlaps the rest of
// backward. The gradients that are not replicated go to `forward_ready` at once (the
// data-parallel buckets); replicated ones after their sum, in replica_sync_finish.
struct ReplicaSync {
  struct Range {
    ShardRange range;            // in the flat buffer
    Communicator* comm = nullptr;
    int key = 0;                 // global index of its first tensor (the shared order)
    bool ready = false;
    WorkPtr work;
  };
  std::vector<Range> ranges;     // in launch order
  float* grads = nullptr;        // the model's gradient buffer
  GradWindows* windows = nullptr;  // ZeRO-2: where the gradients are instead (not owned)
  double wait_seconds = 0;       // blocked on the sums at the end of backward (exposed)
  TraceRecorder* trace = nullptr;
};
ReplicaSync replica_sync_create(Model& model, std::vector<ReplicaGroup>& groups);
// Before a step's last backward: no gradient is final yet.
void replica_sync_begin(ReplicaSync& sync);
// Gradients [offset, offset + count) are final on this rank.
void replica_sync_ready(ReplicaSync& sync, size_t offset, size_t count,
                        const GradsFinalFn& forward_ready);
// Waits for every sum (all must have started) and passes each range to forward_ready.
void replica_sync_finish(ReplicaSync& sync, const GradsFinalFn& forward_ready);
// buffer's replicated ranges (laid out as the parameters: parameters or Adam moments) ← the
// lowest holder's; collective over every replica group. Replicas get the same summed gradient,
// but the data-parallel average that follows adds its elements in an order that may depend on
// where the range sits in each holder's buffer ((a + b) + c is not a + (b + c) in the last
// bit), so replicas could drift apart by rounding; a checkpoint resynchronises them first, so
// that what it saves is what every replica holds and a resumed run continues bit for bit.
void replica_sync_broadcast(const ReplicaSync& sync, float* buffer);

// On the rank holding pipeline coordinate 0: the whole model's global buffer (every tensor at
// global size, in global order) ← each stage's `stage_global` (model_global_floats(model)
// floats: its tensors at global size, in its buffer order; model_gather_global's result), each
// tensor taken from its lowest holder. Other ranks send theirs and get `global` cleared.
// Collective over `pp`.
void pipeline_gather_global(const Model& model, const float* stage_global, Communicator& pp,
                            std::vector<float>& global);

}  // namespace loom
