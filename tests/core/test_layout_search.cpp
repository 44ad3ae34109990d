// The layout search (core/layout_search.h) on small synthetic clusters where the best layout can
// be reasoned out by hand: tensor parallelism across a slow link loses; pipeline parallelism wins
// where memory forbids data parallelism; every layout it proposes passes validation, and its
// prediction is the step-time model's for that config.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/cluster.h"
#include "core/config.h"
#include "core/layout_search.h"
#include "core/memory_model.h"
#include "core/parallel_layout.h"
#include "core/time_model.h"
#include "kernels/cpu/threads.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

// 2 nodes of 2 devices; a fast link inside a node and, between nodes, `inter_gbs`.
ClusterConfig two_by_two(double inter_gbs) {
  return parse_cluster(R"(
    name: "two by two" source: "test"
    device { name: "d" fp32_tflops: 10 bf16_tflops: 20 memory_gib: 16 memory_gbs: 1000
             gemm_efficiency: 1 memory_efficiency: 1 }
    devices_per_node: 2
    intra_node { bandwidth_gbs: 100 latency_us: 1 }
    inter_node { bandwidth_gbs: )" +
                           std::to_string(inter_gbs) +
                           R"( latency_us: 10 }
    collective_latency_us: 5)",
                       "two by two");
}

config::RunConfig model_config(const std::vector<std::string>& overrides) {
  config::RunConfig cfg = testing::config_from(
      {"model.vocab_size=256", "model.d_model=256", "model.n_heads=4", "model.d_mlp=1024",
       "model.max_seq_len=128", "model.prelude_layers=0", "model.block_layers=8", "model.loops=1",
       "model.coda_layers=0", "train.seq_len=128", "train.micro_batch=4", "train.global_batch=16"},
      overrides);
  validate_config(cfg);
  return cfg;
}

config::RunConfig with(const config::RunConfig& cfg, const LayoutCandidate& c) {
  config::RunConfig out = cfg;
  for (const std::string& o : c.overrides()) apply_override(out, o);
  return out;
}

TEST(LayoutSearch, TensorParallelismAcrossASlowLinkLoses) {
  kernels::cpu::init_threads(1);
  const config::RunConfig cfg = model_config({});
  const ClusterConfig cluster = two_by_two(0.01);  // 10 MB/s between the nodes
  const LayoutSearch s = search_layouts(cfg, cluster, 2, 0);
  ASSERT_FALSE(s.fitting.empty());
  const LayoutCandidate& best = s.fitting.front();
  EXPECT_LE(best.tp, 2) << best.describe();  // never across the nodes
  int across = 0;
  for (const LayoutCandidate& c : s.fitting) {
    if (c.tp != 4) continue;
    ++across;
    EXPECT_GT(c.prediction.step, 2 * best.prediction.step) << c.describe();
  }
  EXPECT_GT(across, 0);  // tp 4 was judged, and lost
  // Every proposal is a config loom train accepts, predicted as `loom plan --cluster` would.
  for (size_t i = 0; i < std::min<size_t>(s.fitting.size(), 20); ++i) {
    const config::RunConfig layout_cfg = with(cfg, s.fitting[i]);
    EXPECT_NO_THROW(validate_config(layout_cfg)) << s.fitting[i].describe();
    EXPECT_DOUBLE_EQ(predict_step(layout_cfg, parallel_layout(layout_cfg), cluster, 2).step,
                     s.fitting[i].prediction.step);
  }
  // Fastest first.
  for (size_t i = 1; i < s.fitting.size(); ++i)
    EXPECT_LE(s.fitting[i - 1].prediction.step, s.fitting[i].prediction.step);
}

TEST(LayoutSearch, PipelineWinsWhereMemoryForbidsDataParallelism) {
  kernels::cpu::init_threads(1);
  // One head (no tp), 2-token sequences (no sp): 2 devices are dp 2 or pp 2. A budget between
  // the memory of pp 2 at its least and dp 2 at its least (ZeRO-2, most recomputation) leaves
  // only the pipeline.
  const config::RunConfig cfg =
      model_config({"model.n_heads=1", "train.seq_len=2", "model.max_seq_len=2",
                    "train.micro_batch=1", "train.global_batch=4"});
  const ClusterConfig cluster = two_by_two(100);
  const LayoutSearch all = search_layouts(cfg, cluster, 1, 0);  // one node: 2 devices
  double least_dp = 1e300, least_pp = 1e300;
  for (const auto* list : {&all.fitting, &all.out_of_memory})
    for (const LayoutCandidate& c : *list) {
      (c.pp == 2 ? least_pp : least_dp) = std::min(c.pp == 2 ? least_pp : least_dp, c.bytes);
    }
  ASSERT_LT(least_dp, 1e300);
  ASSERT_LT(least_pp, least_dp);
  const LayoutSearch s = search_layouts(cfg, cluster, 1, (least_pp + least_dp) / 2);
  ASSERT_FALSE(s.fitting.empty());
  for (const LayoutCandidate& c : s.fitting) EXPECT_EQ(c.pp, 2) << c.describe();
  ASSERT_FALSE(s.out_of_memory.empty());
  for (const LayoutCandidate& c : s.out_of_memory) EXPECT_GT(c.bytes, (least_pp + least_dp) / 2);
}

TEST(LayoutSearch, SaysWhatALoserLosesBy) {
  LayoutCandidate best, loser;
  best.prediction.compute = loser.prediction.compute = 1.0;
  best.prediction.bubble = 0.1;
  loser.prediction.bubble = 0.4;
  loser.prediction.tp = 0.05;
  EXPECT_EQ(layout_loses_by(loser, best), "bubble +300.0 ms");
}

}  // namespace
}  // namespace loom
