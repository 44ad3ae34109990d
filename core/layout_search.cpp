#include "core/layout_search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "core/memory_model.h"
#include "core/parallel_layout.h"
#include "core/stage_plan.h"

namespace loom {
namespace {

using Parallel = config::ParallelConfig;
using Train = config::TrainConfig;

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

config::RunConfig config_of(const config::RunConfig& base, const LayoutCandidate& c) {
  config::RunConfig cfg = base;
  Parallel& p = *cfg.mutable_parallel();
  p.set_dp(c.dp);
  p.set_tp(c.tp);
  p.set_pp(c.pp);
  p.set_sp(c.sp);
  p.set_pipeline_schedule(c.schedule);
  p.set_virtual_stages(c.virtual_stages);
  p.set_pipeline_layout("");
  p.set_zero_stage(c.zero);
  p.set_tp_sequence_parallel(base.parallel().tp_sequence_parallel() && c.tp > 1);
  cfg.mutable_train()->set_micro_batch(c.micro_batch);
  cfg.mutable_train()->set_recompute(c.recompute);
  return cfg;
}

// The shapes' schedules: 1F1B without a pipeline; with one 1F1B, ZB-H1, and with two virtual
// stages (when every piece gets a layer) interleaved and ZB-V.
std::vector<std::pair<Parallel::PipelineSchedule, int>> schedules(int pp, int layers) {
  if (pp == 1) return {{Parallel::ONE_F_ONE_B, 1}};
  std::vector<std::pair<Parallel::PipelineSchedule, int>> out = {{Parallel::ONE_F_ONE_B, 1},
                                                                 {Parallel::ZERO_BUBBLE_H1, 1}};
  if (layers >= 2 * pp) {
    out.push_back({Parallel::INTERLEAVED_1F1B, 2});
    out.push_back({Parallel::ZERO_BUBBLE_V, 2});
  }
  return out;
}

// The fastest recompute policy and ZeRO stage of one shape that fit (`fits`), or else the one
// needing the least memory. False when the config refuses the shape altogether.
bool best_of_shape(const config::RunConfig& base, LayoutCandidate shape,
                   const ClusterConfig& cluster, int nodes, double budget, LayoutSearch& out,
                   LayoutCandidate& best, bool& fits) {
  const std::vector<Train::Recompute> policies = {Train::NONE, Train::SQRT, Train::LOOP_BOUNDARY};
  const int reduce = shape.dp * shape.sp;
  bool any = false;
  fits = false;
  // More recomputation is never faster: the next policy only when none of this one fits.
  for (const Train::Recompute policy : policies) {
    if (fits) break;
    for (const int zero : reduce > 1 ? std::vector<int>{0, 1, 2} : std::vector<int>{0}) {
      LayoutCandidate c = shape;
      c.zero = zero;
      c.recompute = policy;
      const config::RunConfig cfg = config_of(base, c);
      try {
        validate_config(cfg);
      } catch (const Error&) {
        ++out.invalid;
        continue;
      }
      ++out.layouts;
      const ParallelLayout layout = parallel_layout(cfg);
      c.kind = layout.pipeline;
      c.bytes = layout_memory(cfg, layout).bytes();
      const bool ok = c.bytes <= budget;
      if (ok) c.prediction = predict_step(cfg, layout, cluster, nodes);
      if (!any || (ok && (!fits || c.prediction.step < best.prediction.step)) ||
          (!ok && !fits && c.bytes < best.bytes))
        best = c;
      any = true;
      fits = fits || ok;
    }
  }
  if (any && !fits) {  // the least memory's step time, to say what the memory costs
    const config::RunConfig cfg = config_of(base, best);
    best.prediction = predict_step(cfg, parallel_layout(cfg), cluster, nodes);
  }
  return any;
}

}  // namespace

std::vector<std::string> LayoutCandidate::overrides() const {
  auto set = [](const char* field, const std::string& value) {
    return std::string(field) + "=" + value;
  };
  return {set("parallel.dp", std::to_string(dp)),
          set("parallel.tp", std::to_string(tp)),
          set("parallel.pp", std::to_string(pp)),
          set("parallel.sp", std::to_string(sp)),
          set("train.micro_batch", std::to_string(micro_batch)),
          set("parallel.pipeline_schedule", Parallel::PipelineSchedule_Name(schedule)),
          set("parallel.virtual_stages", std::to_string(virtual_stages)),
          set("train.recompute", Train::Recompute_Name(recompute)),
          set("parallel.zero_stage", std::to_string(zero))};
}

std::string LayoutCandidate::describe() const {
  char out[160];
  std::snprintf(out, sizeof(out),
                "dp %d × tp %d × pp %d × sp %d, micro_batch %d, %s%s, %s, ZeRO-%d", dp, tp, pp, sp,
                micro_batch, pipeline_kind_title(kind),
                virtual_stages > 1 ? (" v" + std::to_string(virtual_stages)).c_str() : "",
                Train::Recompute_Name(recompute).c_str(), zero);
  return out;
}

LayoutSearch search_layouts(const config::RunConfig& cfg, const ClusterConfig& cluster, int nodes,
                            double memory_bytes) {
  const int world = nodes * cluster.devices_per_node();
  const double budget =
      memory_bytes > 0 ? memory_bytes : cluster.device().memory_gib() * 1024.0 * 1024.0 * 1024.0;
  const config::ModelConfig& m = cfg.model();
  const int layers = unrolled_layers(m), global = cfg.train().global_batch();
  LayoutSearch out;
  for (const int tp : divisors(world)) {
    if (m.n_heads() % tp != 0 || m.d_mlp() % tp != 0) continue;
    for (const int sp : divisors(world / tp)) {
      if (cfg.train().seq_len() % (2 * sp) != 0) continue;
      for (const int pp : divisors(world / tp / sp)) {
        if (pp > layers) continue;
        const int dp = world / tp / sp / pp;
        if (global % dp != 0) continue;
        for (const int micro : divisors(global / dp)) {
          const int micro_batches = global / dp / micro;
          if (micro_batches < pp) continue;
          for (const auto& [schedule, v] : schedules(pp, layers)) {
            LayoutCandidate shape;
            shape.dp = dp;
            shape.tp = tp;
            shape.pp = pp;
            shape.sp = sp;
            shape.micro_batch = micro;
            shape.schedule = schedule;
            shape.virtual_stages = v;
            ++out.shapes;
            LayoutCandidate best;
            bool fits = false;
            if (!best_of_shape(cfg, shape, cluster, nodes, budget, out, best, fits)) continue;
            (fits ? out.fitting : out.out_of_memory).push_back(best);
          }
        }
      }
    }
  }
  if (out.fitting.empty() && out.out_of_memory.empty())
    throw Error("--search: no layout of this model and batch is valid on " + std::to_string(world) +
                " devices (" + std::to_string(out.invalid) + " refused by the config's rules)");
  // Equal times (the model does not tell micro-batch sizes apart): the smaller memory first.
  auto faster = [](const LayoutCandidate& a, const LayoutCandidate& b) {
    const double tie = 1e-9 * std::max(a.prediction.step, b.prediction.step);
    if (std::abs(a.prediction.step - b.prediction.step) > tie)
      return a.prediction.step < b.prediction.step;
    return a.bytes < b.bytes;
  };
  std::stable_sort(out.fitting.begin(), out.fitting.end(), faster);
  std::stable_sort(out.out_of_memory.begin(), out.out_of_memory.end(), faster);
  return out;
}

std::string layout_loses_by(const LayoutCandidate& loser, const LayoutCandidate& best) {
  const auto a = loser.prediction.parts(), b = best.prediction.parts();
  size_t worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].second - b[i].second > a[worst].second - b[worst].second) worst = i;
  char out[96];
  std::snprintf(out, sizeof(out), "%s +%.1f ms", a[worst].first.c_str(),
                1e3 * (a[worst].second - b[worst].second));
  return out;
}

}  // namespace loom
