// The memory model (core/memory_model.h): the largest stage is the one every per-rank figure
// names, and a budget's refusal says what the need is made of and who asks.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/config.h"
#include "core/memory_model.h"
#include "core/parallel_layout.h"
#include "kernels/cpu/threads.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

config::RunConfig config_with(const std::vector<std::string>& overrides) {
  config::RunConfig cfg = testing::config_from(
      {"model.vocab_size=257", "model.d_model=32", "model.n_heads=2", "model.d_mlp=64",
       "model.max_seq_len=32", "model.prelude_layers=1", "model.block_layers=2", "model.loops=3",
       "model.coda_layers=1", "train.seq_len=32", "train.micro_batch=1", "train.global_batch=8"},
      overrides);
  validate_config(cfg);
  return cfg;
}

TEST(MemoryModel, LargestStageIsTheOneThatNeedsTheMostBytes) {
  kernels::cpu::init_threads(1);
  const config::RunConfig cfg = config_with({"parallel.pp=4"});
  const LayoutMemory memory = layout_memory(cfg, parallel_layout(cfg));
  ASSERT_EQ(memory.stages.size(), 4u);
  for (const StageMemory& s : memory.stages) EXPECT_LE(s.bytes(), memory.bytes());
  EXPECT_EQ(memory.bytes(), memory.peak().bytes());
  const ParallelLayout layout = parallel_layout(cfg);
  for (int r = 0; r < 4; ++r)
    EXPECT_EQ(stage_memory(cfg, layout, r).bytes(), memory.stages[static_cast<size_t>(r)].bytes());
}

TEST(MemoryModel, LargestStageNeedNotKeepTheMostActivations) {
  // A large vocabulary puts the embedding's parameters, gradients and AdamW state on the first
  // stage and makes it the largest in all, while its one-layer piece keeps smaller activation
  // slots than the two-layer pieces after it: another stage keeps the most activations. Every
  // per-rank figure is the largest stage's (loom plan's summary once showed this stage's
  // activations beside the recompute table's maximum over stages).
  kernels::cpu::init_threads(1);
  const config::RunConfig cfg = config_with(
      {"model.vocab_size=65536", "parallel.pp=8", "model.loops=6", "train.global_batch=16"});
  const LayoutMemory memory = layout_memory(cfg, parallel_layout(cfg));
  size_t most_activations = 0;
  for (size_t r = 0; r < memory.stages.size(); ++r)
    if (memory.stages[r].arena.total > memory.stages[most_activations].arena.total)
      most_activations = r;
  EXPECT_EQ(memory.largest, 0);
  EXPECT_NE(most_activations, 0u);
}

TEST(MemoryModel, ProblemNamesTheBudgetAndTheCommand) {
  kernels::cpu::init_threads(1);
  const config::RunConfig cfg = config_with({});
  const LayoutMemory memory = layout_memory(cfg, parallel_layout(cfg));
  EXPECT_EQ(memory_problem(memory, 4, 0, "this machine", "loom plan"), "");  // unknown
  EXPECT_EQ(memory_problem(memory, 4, 4 * memory.bytes(), "this machine", "loom plan"), "");
  const std::string plan = memory_problem(memory, 4, memory.bytes(), "this machine", "loom plan");
  EXPECT_NE(plan.find("per rank × 4 ranks but this machine has"), std::string::npos) << plan;
  EXPECT_NE(plan.find("parameters and gradients"), std::string::npos);
  EXPECT_EQ(plan.find("loom plan shows"), std::string::npos);
  EXPECT_NE(memory_problem(cfg, 4, memory.bytes()).find("(loom plan shows the layout's memory)"),
            std::string::npos);
  EXPECT_EQ(memory_size_text(1.5 * 1024 * 1024 * 1024), "1.5 GiB");
  EXPECT_EQ(memory_size_text(24.1 * 1024 * 1024), "24.1 MiB");
}

}  // namespace
}  // namespace loom
