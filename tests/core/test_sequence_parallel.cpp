// Sequence parallelism's memory, as `loom train` allocates it and `loom plan` reports it
// (stage_memory): a rank's activation arena holds its T / sp rows of every sequence plus ring
// attention's buffers, so at sp = 4 it is well under a third of the sp = 1 arena.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/config.h"
#include "core/parallel_layout.h"
#include "core/pipeline.h"
#include "kernels/cpu/threads.h"

namespace loom {
namespace {

config::RunConfig long_sequences(int sp, const char* layout = "ZIGZAG") {
  config::RunConfig cfg;
  for (const std::string& s : std::vector<std::string>{"model.max_seq_len=2048", "train.seq_len=2048", "train.micro_batch=1",
        "train.global_batch=1", "parallel.sp=" + std::to_string(sp),
        std::string("parallel.sequence_layout=") + layout})
    apply_override(cfg, s);
  validate_config(cfg);
  return cfg;
}

// What loom train allocates on pipeline rank 0 for `cfg`.
StageMemory first_stage(const config::RunConfig& cfg) {
  return stage_memory(cfg, parallel_layout(cfg), 0);
}

TEST(SequenceParallel, ArenaAtSp4IsAtMost0_3OfSp1) {
  kernels::cpu::init_threads(2);
  const double whole = first_stage(long_sequences(1)).arena.total;
  for (const char* layout : {"ZIGZAG", "CONTIGUOUS"}) {
    const ArenaSizes sp4 = first_stage(long_sequences(4, layout)).arena;
    EXPECT_LE(sp4.total, 0.3 * whole) << layout << ": " << sp4.total << " of " << whole;
    // The saved activations proper scale exactly: a slot holds T / 4 rows.
    EXPECT_EQ(4 * sp4.slot, first_stage(long_sequences(1)).arena.slot) << layout;
  }
  kernels::cpu::init_threads(0);
}

TEST(SequenceParallel, ArenaShrinksWithEverySpDoubling) {
  kernels::cpu::init_threads(1);
  double previous = first_stage(long_sequences(1)).arena.total;
  for (int sp : {2, 4, 8}) {
    const double now = first_stage(long_sequences(sp)).arena.total;
    EXPECT_LT(now, 0.6 * previous) << "sp " << sp;
    previous = now;
  }
  kernels::cpu::init_threads(0);
}

}  // namespace
}  // namespace loom
