// Values that work for a refused layout (core/layout_advice.h): each suggestion, applied, passes
// validation, and the refusals of the parallel layout carry them.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/error.h"
#include "core/config.h"
#include "core/layout_advice.h"
#include "core/parallel_layout.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

config::RunConfig config_with(const std::vector<std::string>& overrides) {
  config::RunConfig cfg = testing::config_from(
      {"model.vocab_size=16", "model.d_model=96", "model.n_heads=12", "model.d_mlp=192",
       "model.max_seq_len=128", "model.prelude_layers=1", "model.block_layers=2", "model.loops=3",
       "model.coda_layers=1", "train.seq_len=128", "train.micro_batch=2", "train.global_batch=16"},
      overrides);
  return cfg;
}

bool valid(const config::RunConfig& cfg) {
  try {
    validate_config(cfg);
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::string error_of(const config::RunConfig& cfg) {
  try {
    parallel_layout(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(LayoutAdvice, NothingForALayoutThatDivides) {
  const config::RunConfig cfg = config_with({"parallel.tp=4", "parallel.dp=2"});
  ASSERT_TRUE(valid(cfg));
  EXPECT_EQ(layout_advice_tp(cfg), "");
  EXPECT_EQ(layout_advice_batch(cfg), "");
  EXPECT_EQ(layout_advice_seq_len(cfg), "");
  EXPECT_EQ(layout_advice_pieces(cfg), "");
  // A number validation refuses first (not positive) gets no advice either.
  EXPECT_EQ(layout_advice_tp(config_with({"parallel.tp=0"})), "");
}

TEST(LayoutAdvice, TensorParallelDividesHeadsAndMlp) {
  const std::string advice = layout_advice_tp(config_with({"parallel.tp=5"}));
  EXPECT_EQ(advice,
            "try parallel.tp 1, 2, 3, 4, 6 or 12 (dividing both model.n_heads 12 and "
            "model.d_mlp 192)");
  for (int tp : {1, 2, 3, 4, 6, 12})
    EXPECT_TRUE(valid(config_with({"parallel.tp=" + std::to_string(tp)}))) << tp;
}

TEST(LayoutAdvice, BatchSuggestionsDivideAndFillThePipeline) {
  // 16 sequences, 2 per micro-batch on each of 3 ranks: no whole micro-batches.
  EXPECT_EQ(layout_advice_batch(config_with({"parallel.dp=3"})),
            "try train.global_batch 12 or 18 (a multiple of micro_batch × dp = 6) or parallel.dp "
            "1, 2, 4 or 8");
  // pp 4 needs 4 micro-batches per step; 16 / (2 × 4) = 2.
  const std::string advice = layout_advice_batch(config_with({"parallel.pp=4", "parallel.dp=4"}));
  EXPECT_NE(advice.find("train.global_batch 32 (a multiple of micro_batch × dp = 8, at least pp "
                        "× micro_batch × dp = 32)"),
            std::string::npos)
      << advice;
  EXPECT_NE(advice.find("train.micro_batch 1"), std::string::npos) << advice;
  EXPECT_NE(advice.find("parallel.dp 1 or 2"), std::string::npos) << advice;
  EXPECT_TRUE(valid(config_with({"parallel.pp=4", "parallel.dp=4", "train.global_batch=32"})));
  EXPECT_TRUE(valid(config_with({"parallel.pp=4", "parallel.dp=4", "train.micro_batch=1"})));
  EXPECT_TRUE(valid(config_with({"parallel.pp=4", "parallel.dp=2"})));
  // The parallel layout's own refusal carries it.
  EXPECT_NE(error_of(config_with({"parallel.pp=4", "parallel.dp=4"})).find("; " + advice),
            std::string::npos);
}

TEST(LayoutAdvice, SequenceLengthAndSequenceParallel) {
  EXPECT_EQ(layout_advice_seq_len(config_with({"parallel.sp=3"})),
            "try train.seq_len 126 or 132 (model.max_seq_len raised with it) or parallel.sp 1, "
            "2, 4, 8, 16, 32 or 64");
  EXPECT_EQ(layout_advice_seq_len(config_with({"train.seq_len=127"})),
            "try train.seq_len 126 or 128 or parallel.sequence_layout CONTIGUOUS");
  EXPECT_TRUE(valid(config_with({"parallel.sp=4"})));
}

TEST(LayoutAdvice, PiecesAtMostTheUnrolledLayers) {
  // 1 + 2 × 3 + 1 = 8 unrolled layers; pp 4 × 3 chunks = 12 pieces.
  const config::RunConfig cfg =
      config_with({"parallel.pp=4", "parallel.virtual_stages=3", "train.global_batch=32",
                   "train.micro_batch=1", "parallel.pipeline_schedule=INTERLEAVED_1F1B"});
  const std::string advice = layout_advice_pieces(cfg);
  EXPECT_EQ(advice, "try parallel.pp ≤ 2, parallel.virtual_stages ≤ 2 or model.loops ≥ 5");
  EXPECT_NE(error_of(cfg).find("unrolled layers; every piece runs at least one layer; " + advice),
            std::string::npos)
      << error_of(cfg);
  config::RunConfig fixed = cfg;
  apply_override(fixed, "parallel.virtual_stages=2");
  EXPECT_TRUE(valid(fixed));
  fixed = cfg;
  apply_override(fixed, "model.loops=5");
  EXPECT_TRUE(valid(fixed));
}

}  // namespace
}  // namespace loom
