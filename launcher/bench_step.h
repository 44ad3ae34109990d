// Timing whole training steps of one process on random tokens: what `loom bench step` prints and
// `loom bench calibrate` fits the step-time model's efficiency to.
#pragma once
#include <cstddef>

#include "core/config.h"
#include "core/train_step.h"

namespace loom {

struct StepTiming {
  double seconds = 0;  // the median step
  StepResult result;   // the last step's
  int threads = 1;
  size_t params = 0, positions = 0;
  double arena_mib = 0;  // the activation arena's peak
};

// `steps` steps of CONFIG's model (one process, runtime.device and precision as loom train runs
// them) on one micro-batch of random tokens after `warmup` untimed ones.
StepTiming time_train_steps(const config::RunConfig& cfg, int steps, int warmup);

}  // namespace loom
