// The parallel layout resolved from a config (core/parallel_layout.h): what every user of it
// reads, checked against the config fields it comes from.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/error.h"
#include "core/config.h"
#include "core/parallel_layout.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

config::RunConfig config_with(const std::vector<std::string>& overrides) {
  config::RunConfig cfg = testing::config_from(
      {"model.vocab_size=16", "model.d_model=8", "model.n_heads=2", "model.d_mlp=16",
       "model.max_seq_len=8", "model.prelude_layers=1", "model.block_layers=2", "model.loops=3",
       "model.coda_layers=1", "train.seq_len=8", "train.micro_batch=2", "train.global_batch=16"},
      overrides);
  return cfg;
}

TEST(ParallelLayout, ResolvesEveryPart) {
  const ParallelLayout l = parallel_layout(config_with(
      {"parallel.dp=2", "parallel.pp=2", "parallel.sp=2", "parallel.tp=2",
       "parallel.pipeline_schedule=INTERLEAVED_1F1B", "parallel.virtual_stages=2",
       "parallel.zero_stage=1", "parallel.bucket_mb=1", "parallel.sequence_layout=CONTIGUOUS",
       "train.recompute=SQRT", "runtime.precision=BF16", "parallel.grad_reduce_dtype=BF16"}));
  EXPECT_EQ(l.mesh.world_size(), 16);
  EXPECT_EQ(l.pipeline, PipelineKind::kInterleaved1F1B);
  EXPECT_EQ(l.micro_batches, 4);  // 16 / (2 × dp 2)
  EXPECT_EQ(l.stages.pieces(), 4);
  EXPECT_EQ(l.stages.positions(), 8);  // 1 + 2 × 3 + 1 unrolled layers
  EXPECT_EQ(l.sequence, SequenceLayout::kContiguous);
  EXPECT_TRUE(l.zero);
  EXPECT_EQ(l.reduce_ranks(), 4);
  EXPECT_EQ(l.bucket_floats, size_t{1} << 18);  // 1 MiB of fp32
  EXPECT_EQ(l.recompute, Recompute::kSqrt);
  EXPECT_TRUE(l.bf16);
  EXPECT_TRUE(l.bf16_grad_reduce);
}

TEST(ParallelLayout, ZeroOnlyWhereGradientsAreReduced) {
  EXPECT_FALSE(parallel_layout(config_with({"parallel.zero_stage=1"})).zero);
  EXPECT_TRUE(parallel_layout(config_with({"parallel.zero_stage=1", "parallel.sp=2"})).zero);
}

TEST(ParallelLayout, ScheduleThatCannotRunIsAnError) {
  // Interleaving needs the micro-batches to be a multiple of pp: 3 micro-batches, pp 2.
  EXPECT_THROW(parallel_layout(config_with({"parallel.pp=2", "train.global_batch=6",
                                            "parallel.pipeline_schedule=INTERLEAVED_1F1B",
                                            "parallel.virtual_stages=2"})),
               Error);
}

}  // namespace
}  // namespace loom
