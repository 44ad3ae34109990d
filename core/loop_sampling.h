// Loop counts of a looped model: the count each training step runs (model.loops_sampling), the
// counts validation runs, and the range the activation arena must serve.
//
//   const loom::LoopCounts range = loom::run_loop_counts(cfg);   // model_set_loop_range
//   int loops = loom::draw_loops(cfg, step);                     // before each step
//   for (int n : loom::eval_loop_counts(cfg)) ...                // each validation
#pragma once
#include <vector>

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

// The loop counts validation runs, in the order train.eval_loops lists them (a 0 there is
// model.loops); [model.loops] when it lists none.
std::vector<int> eval_loop_counts(const config::RunConfig& cfg);

// The first of eval_loop_counts: the count of the run's val_loss, of the closing sample and of
// loom sample's default.
int eval_loops(const config::RunConfig& cfg);

}  // namespace loom
