// The training loop: data, gradient accumulation, clipping, AdamW, validation, metrics,
// checkpoints and resume — on one process or as one rank of a data-parallel job.
//
// With dp > 1 each rank reads its contiguous part of every global batch (the union is the
// single-process batch, in order), gradients are averaged over the dp × sp group in buckets while
// backward runs (ZeRO-1: reduce-scattered, each rank updating its shard), and rank 0 alone writes
// the run directory. Losses equal the single-process run's up to float rounding.
//
// A run directory holds config.textproto (the resolved config), metrics.jsonl (one JSON object
// per optimizer step), train.log (the terminal's lines) and checkpoints/step_NNNNNNN/.
//
//   loom::TrainOptions options{.run_dir = "runs/demo"};
//   loom::TrainSummary s = loom::train(cfg, options);
#pragma once
#include <atomic>
#include <string>

#include "core/model.h"
#include "core/optimizer.h"
#include "loom.pb.h"
#include "parallel/grad_reducer.h"
#include "parallel/groups.h"

namespace loom {

struct TrainOptions {
  std::string run_dir;  // required
  bool resume = false;  // continue from the newest checkpoint in run_dir
  bool quiet = false;   // no terminal output (tests)
  ProcessGroups* groups = nullptr;  // this rank's groups; null: a single-process run
  // Set (to a signal number) by a signal handler to stop cleanly: every rank finishes its step,
  // a checkpoint is written, and train returns with stopped_by_signal set.
  const std::atomic<int>* stop_request = nullptr;
};

struct TrainSummary {
  long steps = 0;           // optimizer steps completed
  double last_loss = 0.0;   // training loss of the last step
  double last_val_loss = -1.0;
  std::string run_dir;
  std::string last_checkpoint;
  int stopped_by_signal = 0;  // the stop_request signal the run stopped on, else 0
};

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options);

struct StepResult {
  double loss = 0.0;       // mean over the step's micro-batches
  double grad_norm = 0.0;  // before clipping
  bool finite = true;      // false: nothing was updated
  double comm_wait_s = 0;  // time blocked on data-parallel communication (exposed)
};

// The data-parallel side of a step; empty for one rank.
struct DataParallelStep {
  Communicator* dp = nullptr;       // the dp × sp group: losses and gradient norms
  GradReducer* reducer = nullptr;   // gradient buckets (ZeRO-1 when reducer->zero)
};

// One optimizer step over `micro_batches` micro-batches of (B, T) tokens stored one after the
// other in inputs and targets: zero grads, forward/backward each (loss scaled so gradients are
// those of the mean over all tokens), the data-parallel reduction (during the last micro-batch's
// backward), clip, AdamW with learning rate lr. Shared by the trainer and the step benchmark.
StepResult train_step(Model& model, Optimizer& optimizer, const config::RunConfig& cfg, float lr,
                      const int* inputs, const int* targets, int micro_batches,
                      const DataParallelStep& parallel = {});

}  // namespace loom
