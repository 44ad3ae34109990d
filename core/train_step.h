// One optimizer step and one validation pass of this rank, through its pipeline schedule:
// micro-batches forward and backward (core/pipeline.h), gradients summed across the pipeline
// stages that hold replicas and averaged over the data-parallel group while backward runs, the
// loss and gradient norm reduced over every group, clipping and AdamW. Shared by the trainer,
// the step benchmark and the parity tool (docs/architecture.md, "The data path of a step").
//
//   loom::Pipeline pipe = loom::pipeline_create(cfg, nullptr, 0);
//   loom::model_plan(model, B, T, pipe.slots, pipe.boundaries, pipe.split_backward);
//   loom::StepResult r = loom::train_step(model, optimizer, pipe, cfg, lr, inputs, targets);
#pragma once
#include <vector>

#include "core/data.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/pipeline.h"
#include "core/trace.h"
#include "loom.pb.h"
#include "parallel/grad_reducer.h"

namespace loom {

struct StepResult {
  double loss = 0.0;       // mean over the step's micro-batches (and data-parallel ranks)
  double grad_norm = 0.0;  // before clipping
  bool finite = true;      // false: nothing was updated
  double comm_wait_s = 0;  // time blocked on communication (exposed): dp, tp, pp, replicas
  // Mixture-of-Recursions (empty fractions without a router): each iteration's share of the
  // tokens and the auxiliary loss, means over the data-parallel ranks, and the step's training
  // FLOPs over all of them.
  RoutingStats routing;
  double step_flops = 0;
  // The step's FLOPs over every rank (docs/architecture.md, "Utilisation"): the model's
  // (model_train_flops_per_token, or a routed model's step_flops), and with what
  // train.recompute ran again, the hardware's.
  double model_flops = 0, hardware_flops = 0;
};

// The parallel side of a step; all null for one rank.
struct StepParallel {
  Communicator* dp = nullptr;        // the dp × sp group: losses and gradient norms
  GradReducer* reducer = nullptr;    // gradient buckets (ZeRO-1 when reducer->zero)
  Communicator* pp = nullptr;        // the pipeline group: losses and gradient norms
  ReplicaSync* replicas = nullptr;   // shared-weight gradients summed across stages
  TraceRecorder* trace = nullptr;
  FlightRecorder* flight = nullptr;  // phases of the step (parallel/flight_recorder.h)
};

// One optimizer step over pipe.micro_batches micro-batches of (B, T) tokens stored one after
// the other in inputs and targets (every rank passes the same whole sequences; the first stage
// reads inputs, the last targets; with sp > 1 the model takes its rows of them): zero grads, the schedule's forwards and backwards (loss scaled so gradients are
// those of the mean over all tokens), the reductions (during the last micro-batch's backward),
// clip, AdamW with learning rate lr.
StepResult train_step(Model& model, Optimizer& optimizer, Pipeline& pipe,
                      const config::RunConfig& cfg, float lr, const int* inputs,
                      const int* targets, const StepParallel& parallel = {});

// Which part of the data a rank reads: its data-parallel coordinate and the dp size (sequence-
// and tensor-parallel ranks with the same coordinate read the same sequences).
struct DataShare {
  int rank = 0, size = 1;
};

// Mean loss over the first `batches` global batches of the validation set (so the same
// sequences whatever the micro-batch size, dp, pp and sp), in micro-batches of B sequences of
// T tokens shared out over the dp ranks and run through the pipeline forward only; the losses
// are summed over dp_sp. `pp` may be null for one stage.
double evaluate(Model& model, Pipeline& pipe, const TokenDataset& val, int batches,
                int global_batch, int B, int T, const DataShare& share, Communicator& dp_sp,
                Communicator* pp);

}  // namespace loom
