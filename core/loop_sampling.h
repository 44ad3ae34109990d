// Loop counts of a looped model: the count each training step runs (model.loops_sampling), the
// count validation runs, and the range the activation arena must serve.
//
//   const loom::LoopCounts range = loom::run_loop_counts(cfg);   // model_set_loop_range
//   int loops = loom::draw_loops(cfg, step);                     // before each step
#pragma once
#include "loom.pb.h"

namespace loom {

struct LoopCounts {
  int min = 1, max = 1;
};

// Every loop count the run may use: training's draws, model.loops and train.eval_loops.
LoopCounts run_loop_counts(const config::RunConfig& cfg);

// The loop count of training step `step` (0-based). A pure function of train.seed and the step,
// so every rank draws the same and a resumed run continues the same sequence (the checkpoint
// holds both).
int draw_loops(const config::RunConfig& cfg, long step);

// The loop count validation runs: train.eval_loops, or model.loops.
int eval_loops(const config::RunConfig& cfg);

}  // namespace loom
