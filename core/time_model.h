// The step-time model (docs/architecture.md, "Step-time model"): what one optimizer step of a
// layout takes on a cluster (core/cluster.h), from the model's FLOPs and bytes against the
// device's calibrated peaks, the α–β cost of every collective on the links its group crosses, and
// the pipeline schedule itself, run in simulated time. The parts add up to the step:
//
//   step = compute + recompute + tp + sp        (the busiest pipeline rank's work)
//        + bubble + pp_p2p                      (its waits, from the simulated schedule)
//        + dp + replica + optimizer             (after the last backward)
//
//   loom::StepPrediction p = loom::predict_step(cfg, loom::parallel_layout(cfg), cluster);
#pragma once
#include <string>
#include <vector>

#include "core/cluster.h"
#include "core/config.h"
#include "core/parallel_layout.h"

namespace loom {

struct StepPrediction {
  // Seconds of one step, by part (they sum to `step`).
  double compute = 0;    // forward and backward kernels on the critical pipeline rank
  double recompute = 0;  // train.recompute's forwards again, on that rank
  double tp = 0;         // tensor-parallel collectives not hidden (Ladder hides behind the next
                         // sub-layer; sequence parallelism's gathers behind the rank's own rows)
  double sp = 0;         // ring transfers not hidden behind block attention; Ulysses' all-to-alls
  double bubble = 0;     // the rank idle in the simulated schedule (no transfer time)
  double pp_p2p = 0;     // what the pipeline's sends add to that
  double dp = 0;         // gradient reduction not hidden behind the last backward (ZeRO-1: and
                         // the parameters' all-gather)
  double replica = 0;    // shared weights summed over the pipeline stages that hold them
  double optimizer = 0;  // AdamW over the rank's parameters (or ZeRO shard)
  double step = 0;
  // What the overlaps hid (seconds per step on the critical rank, and of the dp reduction).
  double hidden_tp = 0, hidden_sp = 0, hidden_dp = 0;
  double model_flops = 0;  // per step, Megatron's convention (model_train_flops_per_token)
  double tokens_per_s = 0, mfu = 0;
  std::string critical;  // the largest part's name
  // The parts as (name, seconds), in the order above.
  std::vector<std::pair<std::string, double>> parts() const;
};

// Throws loom::Error when the cluster has fewer devices than the layout's world size needs
// (`nodes` × devices_per_node), naming both.
StepPrediction predict_step(const config::RunConfig& cfg, const ParallelLayout& layout,
                            const ClusterConfig& cluster, int nodes);

// The pipeline schedule run in simulated time: rank r's list (parallel/pipeline_schedule.h) with
// each compute lasting duration(rank, action) and each message between two ranks taking
// p2p(from, to) seconds; returns per rank the time its last action ends.
struct PipelineTiming {
  std::vector<double> end;  // per rank
  double makespan = 0;
};
PipelineTiming pipeline_timed(PipelineKind kind, int p, int m, int v,
                              const std::function<double(int, const PipelineAction&)>& duration,
                              const std::function<double(int, int)>& p2p);

}  // namespace loom
