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
#include <functional>
#include <string>

#include "core/train_step.h"
#include "loom.pb.h"
#include "parallel/flight_recorder.h"
#include "parallel/grad_reducer.h"
#include "parallel/groups.h"

namespace loom {

// What a signal handler and the training loop share: lock-free atomics only (a handler can reach
// nothing else). One per process (launcher/train_signals.h installs the handlers).
struct RunSignals {
  // The signal asking the run to stop at the next step boundary with a checkpoint (SIGUSR1,
  // SIGTERM, SIGINT), else 0: written by the handler, read after every step.
  std::atomic<int> stop{0};
  // Written by the loop for a handler that ends the process at once and leaves a last line: the
  // steps completed, and train.log opened for appending (-1: not open, or not this rank's).
  std::atomic<long> step{0};
  std::atomic<int> log_fd{-1};
  static_assert(std::atomic<long>::is_always_lock_free && std::atomic<int>::is_always_lock_free);
};

struct TrainOptions {
  std::string run_dir;  // required
  bool resume = false;  // continue from the newest checkpoint in run_dir
  // A checkpoint folder whose weights a new run starts from instead of model_init's (the
  // optimizer and the step start afresh; its model must be the config's). A resume that finds a
  // checkpoint of the run's own wins. "": none.
  std::string init_from;
  bool quiet = false;   // no terminal output (tests)
  ProcessGroups* groups = nullptr;  // this rank's groups; null: a single-process run
  // signals->stop set by a handler stops the run cleanly: every rank finishes its step, a
  // checkpoint is written, and train returns with stopped_by_signal set. Null: none handled.
  RunSignals* signals = nullptr;
  // This run is automatic restart number `restart` (loom train --max-restarts) after `cause`:
  // train.log and metrics.jsonl record it once the run has resumed. 0: not a restart.
  int restart = 0;
  std::string restart_cause;
  // This rank's flight recorder, whose step phase train marks (parallel/flight_recorder.h);
  // null: none.
  FlightRecorder* flight = nullptr;
  // Called once the run's start-up (inputs, run directory, model, resume) has passed and
  // training begins: an error before it is a start-up error (the CLI reports it once, without
  // flight dumps).
  std::function<void()> on_started;
};

struct TrainSummary {
  long steps = 0;           // optimizer steps completed
  double last_loss = 0.0;   // training loss of the last step
  double last_val_loss = -1.0;  // at the first of train.eval_loops' counts; −1: none yet
  std::string run_dir;
  std::string last_checkpoint;
  int stopped_by_signal = 0;  // the signals->stop the run stopped on, else 0
};

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options);

}  // namespace loom
