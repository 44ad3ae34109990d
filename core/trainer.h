// The training loop: data, gradient accumulation, clipping, AdamW, validation, metrics,
// checkpoints and resume — on one process or as one rank of a data-, tensor- and
// pipeline-parallel job.
//
// With dp > 1 each rank reads its contiguous part of every global batch (the union is the
// single-process batch, in order), gradients are averaged over the dp × sp group in buckets while
// backward runs (ZeRO-1: reduce-scattered, each rank updating its shard), and rank 0 alone writes
// the run directory. With pp > 1 each rank runs its pieces of the unrolled list through the
// pipeline schedule (core/pipeline.h). Losses equal the single-process run's up to float
// rounding.
//
// A run directory holds config.textproto (the resolved config), metrics.jsonl (one JSON object
// per optimizer step), train.log (the terminal's lines) and checkpoints/step_NNNNNNN/.
//
//   loom::TrainOptions options{.run_dir = "runs/demo"};
//   loom::TrainSummary s = loom::train(cfg, options);
#pragma once
#include <atomic>
#include <string>

#include "core/train_step.h"
#include "loom.pb.h"
#include "parallel/flight_recorder.h"
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
  // This rank's flight recorder, whose step phase train marks (parallel/flight_recorder.h);
  // null: none.
  FlightRecorder* flight = nullptr;
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

}  // namespace loom
