// The step-time model (core/time_model.h) on cases worked out by hand: one collective, which link
// a group crosses, one pipeline schedule in simulated time, the recomputation policies, the
// overlaps; and a prediction is the sum of its parts. The cluster files shipped in cluster/ load.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/error.h"
#include "core/cluster.h"
#include "core/config.h"
#include "core/parallel_layout.h"
#include "core/time_model.h"
#include "kernels/cpu/threads.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

// Round numbers: 100 TFLOP/s at full efficiency, 1000 GB/s of memory, 4 devices per node; a
// 100 GB/s link inside a node with 1 µs per hop, 10 GB/s between nodes with 10 µs, 5 µs base.
ClusterConfig round_cluster() {
  return parse_cluster(R"(
    name: "round" source: "test"
    device { name: "d" fp32_tflops: 100 bf16_tflops: 200 memory_gib: 16 memory_gbs: 1000
             gemm_efficiency: 1 memory_efficiency: 1 }
    devices_per_node: 4
    intra_node { bandwidth_gbs: 100 latency_us: 1 }
    inter_node { bandwidth_gbs: 10 latency_us: 10 }
    collective_latency_us: 5)",
                       "round");
}

config::RunConfig config_with(const std::vector<std::string>& overrides) {
  config::RunConfig cfg = testing::config_from(
      {"model.vocab_size=256", "model.d_model=256", "model.n_heads=4", "model.d_mlp=1024",
       "model.max_seq_len=128", "model.prelude_layers=1", "model.block_layers=2", "model.loops=4",
       "model.coda_layers=1", "train.seq_len=128", "train.micro_batch=4", "train.global_batch=16"},
      overrides);
  validate_config(cfg);
  return cfg;
}

StepPrediction predict(const std::vector<std::string>& overrides, int nodes = 4) {
  kernels::cpu::init_threads(1);
  const config::RunConfig cfg = config_with(overrides);
  return predict_step(cfg, parallel_layout(cfg), round_cluster(), nodes);
}

TEST(TimeModel, OneAllReduceIsNcclsRingModel) {
  const LinkCost link{5e-6, 1e-6, 100e9, false};
  // 2(p − 1) = 6 hops and 2(p − 1)/p = 1.5 of the buffer through each device's link.
  EXPECT_DOUBLE_EQ(collective_seconds(Collective::kAllReduce, 1e9, 4, link),
                   5e-6 + 6 * 1e-6 + 1.5 * 1e9 / 100e9);
  EXPECT_DOUBLE_EQ(collective_seconds(Collective::kReduceScatter, 1e9, 4, link),
                   5e-6 + 3 * 1e-6 + 0.75 * 1e9 / 100e9);
  EXPECT_DOUBLE_EQ(collective_seconds(Collective::kSendRecv, 1e9, 2, link),
                   5e-6 + 1e-6 + 1e9 / 100e9);
  EXPECT_EQ(collective_seconds(Collective::kAllReduce, 1e9, 1, link), 0.0);
}

TEST(TimeModel, AGroupCrossesTheNetworkWhenItSpansNodes) {
  const ClusterConfig c = round_cluster();  // 4 devices per node
  const Mesh mesh{.dp = 2, .pp = 1, .sp = 1, .tp = 4};
  EXPECT_FALSE(group_link(c, mesh, Axis::kTensor).inter_node);  // ranks 0–3: one node
  EXPECT_TRUE(group_link(c, mesh, Axis::kData).inter_node);     // ranks 0 and 4
  EXPECT_DOUBLE_EQ(group_link(c, mesh, Axis::kData).bytes_per_s, 10e9);
  const Mesh wide{.dp = 1, .pp = 1, .sp = 1, .tp = 8};
  EXPECT_TRUE(group_link(c, wide, Axis::kTensor).inter_node);
}

TEST(TimeModel, OneFOneBInSimulatedTime) {
  // p = 2, m = 2, F = 1, B = 2. Rank 1: F0 [1, 2], B0 [2, 4], F1 [4, 5], B1 [5, 7]; rank 0:
  // F0 [0, 1], F1 [1, 2], B0 [4, 6], B1 [7, 9]: (p − 1)(F + B) = 3 idle beside m(F + B) = 6.
  auto duration = [](int, const PipelineAction& a) {
    return a.type == PipelineAction::Type::kForward ? 1.0 : 2.0;
  };
  const PipelineTiming t =
      pipeline_timed(PipelineKind::kOneFOneB, 2, 2, 1, duration, [](int, int) { return 0.0; });
  EXPECT_DOUBLE_EQ(t.makespan, 9.0);
  EXPECT_DOUBLE_EQ(t.end[1], 7.0);
  // Each message 0.5: rank 1 runs [1.5, 2.5], [2.5, 4.5], [4.5, 5.5], [5.5, 7.5]; rank 0's
  // backwards wait for 5 and 8.
  EXPECT_DOUBLE_EQ(
      pipeline_timed(PipelineKind::kOneFOneB, 2, 2, 1, duration, [](int, int) { return 0.5; })
          .makespan,
      10.0);
  // GPipe: all forwards, then all backwards — the same idle time at p = 2, m = 2.
  EXPECT_DOUBLE_EQ(
      pipeline_timed(PipelineKind::kGPipe, 2, 2, 1, duration, [](int, int) { return 0.0; })
          .makespan,
      9.0);
}

TEST(TimeModel, APredictionIsTheSumOfItsParts) {
  for (const auto& overrides : std::vector<std::vector<std::string>>{
           {},
           {"parallel.tp=4", "model.residual=LADDER"},
           {"parallel.pp=2", "parallel.dp=2", "parallel.zero_stage=1"},
           {"parallel.sp=2", "parallel.tp=2", "train.recompute=SQRT"},
           {"parallel.pp=2", "parallel.virtual_stages=2",
            "parallel.pipeline_schedule=INTERLEAVED_1F1B", "parallel.tp=2"}}) {
    const StepPrediction p = predict(overrides);
    double sum = 0;
    for (const auto& part : p.parts()) {
      EXPECT_GE(part.second, 0.0) << part.first;
      sum += part.second;
    }
    EXPECT_NEAR(p.step, sum, 1e-12 * sum);
    EXPECT_GT(p.mfu, 0.0);
    EXPECT_LT(p.mfu, 1.0);
    EXPECT_NEAR(p.tokens_per_s, 16.0 * 128 / p.step, 1e-9 * p.tokens_per_s);
  }
}

TEST(TimeModel, ZeroStage2ReducesThePerMicroBatchLayersInEveryMicroBatch) {
  // dp 4 over 4 nodes, 2 micro-batches: ZeRO-2 sends the prelude and coda layers' gradients once
  // more than ZeRO-1 (the loop, embedding and head once per step), hidden or not.
  // Three prelude and three coda layers: more than ZeRO-2's two slots hold, so reduced per
  // micro-batch.
  const std::vector<std::string> common = {"parallel.dp=4", "train.global_batch=32",
                                           "model.prelude_layers=3", "model.coda_layers=3"};
  auto with = [&](const char* stage) {
    std::vector<std::string> o = common;
    o.push_back(stage);
    return predict(o, 4);
  };
  const StepPrediction one = with("parallel.zero_stage=1"), two = with("parallel.zero_stage=2");
  const config::RunConfig cfg = config_with(common);
  // A layer: qkv, projection, fc and its projection with biases, two LayerNorms.
  const double C = 256, F = 1024,
               layer = C * 3 * C + 3 * C + C * C + C + C * F + F + F * C + C + 4 * C;
  const LinkCost link = group_link(round_cluster(), parallel_layout(cfg).mesh, Axis::kData);
  EXPECT_NEAR(two.dp + two.hidden_dp - one.dp - one.hidden_dp,
              collective_seconds(Collective::kReduceScatter, 6 * layer * 4.0, 4, link), 1e-12);
  EXPECT_DOUBLE_EQ(two.compute, one.compute);
}

TEST(TimeModel, LadderHidesTensorParallelSumsTheStandardResidualWaitsOn) {
  const StepPrediction standard = predict({"parallel.tp=4"});
  const StepPrediction ladder = predict({"parallel.tp=4", "model.residual=LADDER"});
  EXPECT_EQ(standard.hidden_tp, 0.0);
  EXPECT_GT(ladder.hidden_tp, 0.0);
  EXPECT_LT(ladder.tp, standard.tp);
  EXPECT_DOUBLE_EQ(ladder.compute, standard.compute);
}

TEST(TimeModel, RecomputationRunsTheForwardAgainAsItsPlanSays) {
  // Loop positions only (no prelude or coda): LOOP_BOUNDARY runs each forward once more, SQRT
  // (⌈√4⌉ = 2 iterations per segment) 2 − 1/2 times.
  const std::vector<std::string> loop_only = {"model.prelude_layers=0", "model.coda_layers=0"};
  auto with = [&](const char* policy) {
    std::vector<std::string> o = loop_only;
    o.push_back(std::string("train.recompute=") + policy);
    return predict(o);
  };
  const StepPrediction none = with("NONE"), boundary = with("LOOP_BOUNDARY"), sqrt = with("SQRT");
  EXPECT_EQ(none.recompute, 0.0);
  EXPECT_GT(boundary.recompute, 0.0);
  EXPECT_NEAR(sqrt.recompute / boundary.recompute, 1.5, 1e-12);
  EXPECT_DOUBLE_EQ(boundary.compute, none.compute);
}

TEST(TimeModel, TensorParallelismAcrossNodesPaysTheNetwork) {
  // tp 8 over nodes of 4 devices crosses the 10× slower link.
  const StepPrediction inside = predict({"model.n_heads=8", "parallel.tp=4", "parallel.dp=2"}, 2);
  const StepPrediction across = predict({"model.n_heads=8", "parallel.tp=8"}, 2);
  EXPECT_GT(across.tp, 5 * inside.tp);
}

TEST(TimeModel, RefusesALayoutLargerThanTheCluster) {
  try {
    predict({"parallel.dp=4", "parallel.tp=4"}, 2);  // 16 ranks, 2 nodes of 4
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("the layout needs 16 devices but 2 node(s) of round have 8"),
        std::string::npos);
  }
}

TEST(TimeModel, ShippedClustersLoadAndBadOnesAreNamed) {
  for (const char* name : {"dgx_a100", "dgx_h100", "h200"}) {
    const ClusterConfig c =
        load_cluster(std::string(LOOM_SOURCE_DIR) + "/cluster/" + name + ".textproto");
    EXPECT_EQ(c.devices_per_node(), 8) << name;
  }
  try {
    parse_cluster("name: \"x\"", "bad.textproto");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.textproto: a cluster needs"), std::string::npos);
  }
  try {
    parse_cluster("name: \"x\" devices_per_node: -", "worse.textproto");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("worse.textproto: not a cluster description"),
              std::string::npos);
  }
}

}  // namespace
}  // namespace loom
