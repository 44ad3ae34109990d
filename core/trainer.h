// The training loop: data, gradient accumulation, clipping, AdamW, validation, metrics,
// checkpoints and resume, for one process.
//
// A run directory holds config.textproto (the resolved config), metrics.jsonl (one JSON object
// per optimizer step), train.log (the terminal's lines) and checkpoints/step_NNNNNNN/.
//
//   loom::TrainOptions options{.run_dir = "runs/demo"};
//   loom::TrainSummary s = loom::train(cfg, options);
#pragma once
#include <string>

#include "core/model.h"
#include "core/optimizer.h"
#include "loom.pb.h"

namespace loom {

struct TrainOptions {
  std::string run_dir;  // required
  bool resume = false;  // continue from the newest checkpoint in run_dir
  bool quiet = false;   // no terminal output (tests)
};

struct TrainSummary {
  long steps = 0;           // optimizer steps completed
  double last_loss = 0.0;   // training loss of the last step
  double last_val_loss = -1.0;
  std::string run_dir;
  std::string last_checkpoint;
};

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options);

struct StepResult {
  double loss = 0.0;       // mean over the step's micro-batches
  double grad_norm = 0.0;  // before clipping
  bool finite = true;      // false: nothing was updated
};

// One optimizer step over `micro_batches` micro-batches of (B, T) tokens stored one after the
// other in inputs and targets: zero grads, forward/backward each (loss scaled so gradients are
// those of the mean over all tokens), clip, AdamW with learning rate lr. Shared by the trainer
// and the step benchmark.
StepResult train_step(Model& model, Optimizer& optimizer, const config::RunConfig& cfg, float lr,
                      const int* inputs, const int* targets, int micro_batches);

}  // namespace loom
