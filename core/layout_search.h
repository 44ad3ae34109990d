// The layout search behind `loom plan --search` (docs/architecture.md, "Step-time model"): every
// valid layout of a config on a cluster's devices, each judged by the memory model
// (core/memory_model.h) and the step-time model (core/time_model.h), best first.
//
// A layout is dp · tp · pp · sp = the cluster's devices (nodes × devices_per_node), a
// micro-batch (train.global_batch is kept), a pipeline schedule (1F1B, interleaved and ZB-V with
// 2 virtual stages, ZB-H1), a recompute policy and a ZeRO stage. The model, the residual, the
// precision and tp_sequence_parallel stay as the config has them. For each shape (dp, tp, pp,
// sp, micro-batch, schedule) the fastest ZeRO stage that fits the device's memory with the least
// recomputation that lets any fit is kept (more recomputation is never faster); a shape where
// none fits is rejected as out of memory. Equal step times rank the smaller memory first.
//
//   loom::LayoutSearch s = loom::search_layouts(cfg, cluster, nodes, memory_bytes);
//   for (const loom::LayoutCandidate& c : s.fitting) std::printf("%s\n", c.describe().c_str());
#pragma once
#include <string>
#include <vector>

#include "core/cluster.h"
#include "core/config.h"
#include "core/parallel_layout.h"
#include "core/time_model.h"

namespace loom {

struct LayoutCandidate {
  int dp = 1, tp = 1, pp = 1, sp = 1, micro_batch = 1, virtual_stages = 1, zero = 0;
  config::ParallelConfig::PipelineSchedule schedule = config::ParallelConfig::ONE_F_ONE_B;
  config::TrainConfig::Recompute recompute = config::TrainConfig::NONE;
  PipelineKind kind = PipelineKind::kOneFOneB;  // the schedule's (parallel_layout's)
  StepPrediction prediction;
  double bytes = 0;  // per rank, the largest stage's (core/memory_model.h)
  // The --set assignments that turn the searched config into this layout.
  std::vector<std::string> overrides() const;
  std::string describe() const;  // "dp 8 × tp 1 × pp 1 × sp 1, micro_batch 4, 1F1B, ..."
};

struct LayoutSearch {
  std::vector<LayoutCandidate> fitting;  // fastest first
  // Shapes with no recompute policy and ZeRO stage that fits, each at its smallest memory;
  // fastest first.
  std::vector<LayoutCandidate> out_of_memory;
  int shapes = 0;   // (dp, tp, pp, sp, micro-batch, schedule) tried
  int layouts = 0;  // layouts judged (each with a recompute policy and ZeRO stage)
  int invalid = 0;  // refused by config validation
};

// Every layout of `cfg` on `nodes` nodes of `cluster` against memory_bytes per device (0: the
// cluster's device memory). Throws loom::Error when no layout is valid at all.
LayoutSearch search_layouts(const config::RunConfig& cfg, const ClusterConfig& cluster, int nodes,
                            double memory_bytes);

// Why `loser` is slower than `best`: the part of its step that grew most, e.g. "bubble +120.3 ms".
std::string layout_loses_by(const LayoutCandidate& loser, const LayoutCandidate& best);

}  // namespace loom
