#include "core/time_model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "base/error.h"
#include "core/backend.h"
#include "core/memory_model.h"
#include "core/model.h"
#include "core/stage_plan.h"
#include "parallel/pipeline_schedule.h"

namespace loom {

std::vector<std::pair<std::string, double>> StepPrediction::parts() const {
  return {{"compute", compute}, {"recompute", recompute}, {"tp", tp},
          {"sp", sp},           {"bubble", bubble},       {"pp_p2p", pp_p2p},
          {"dp", dp},           {"replica", replica},     {"optimizer", optimizer}};
}

PipelineTiming pipeline_timed(PipelineKind kind, int p, int m, int v,
                              const std::function<double(int, const PipelineAction&)>& duration,
                              const std::function<double(int, int)>& p2p) {
  using Type = PipelineAction::Type;
  const bool v_shape = pipeline_v_shape(kind);
  std::vector<std::vector<PipelineAction>> lists;
  for (int r = 0; r < p; ++r) lists.push_back(pipeline_schedule(kind, p, m, v, r));
  const int pieces = p * v;
  // When each (type, micro, piece) finished, −1 not yet.
  std::map<std::tuple<int, int, int>, double> done;
  auto finished = [&](Type t, int micro, int g) {
    const auto it = done.find({static_cast<int>(t), micro, g});
    return it == done.end() ? -1.0 : it->second;
  };
  PipelineTiming out;
  out.end.assign(p, 0.0);
  std::vector<size_t> pc(p, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < p; ++r)
      while (pc[r] < lists[r].size()) {
        const PipelineAction& a = lists[r][pc[r]];
        if (a.type == Type::kRecvForward || a.type == Type::kRecvBackward) {
          ++pc[r];
          continue;
        }
        const int g = pipeline_stage_of(p, v_shape, r, a.chunk);
        double ready = 0;  // its inputs: the neighbouring piece's message, its own earlier pass
        auto input = [&](Type t, int from_piece) {
          const double at = finished(t, a.micro, from_piece);
          if (at < 0) return false;
          const int from = pipeline_rank_of(p, v_shape, from_piece);
          ready = std::max(ready, at + (from == r ? 0.0 : p2p(from, r)));
          return true;
        };
        bool ok = true;
        if (a.type == Type::kForward && g > 0) ok = input(Type::kForward, g - 1);
        if (a.type == Type::kBackward) {
          ok = input(Type::kForward, g);
          if (ok && g + 1 < pieces) ok = input(Type::kBackward, g + 1);
        }
        if (a.type == Type::kWeight) ok = input(Type::kBackward, g);
        if (!ok) break;
        const double end = std::max(out.end[r], ready) + duration(r, a);
        done[{static_cast<int>(a.type), a.micro, g}] = end;
        out.end[r] = end;
        ++pc[r];
        progress = true;
      }
  }
  for (int r = 0; r < p; ++r) LOOM_CHECK(pc[r] == lists[r].size());  // the schedules run through
  out.makespan = *std::max_element(out.end.begin(), out.end.end());
  return out;
}

namespace {

// One pass's seconds by kind: kernels, recomputation, exposed tp and sp communication.
struct Cost {
  double compute = 0, recompute = 0, tp = 0, sp = 0;
  double hidden_tp = 0, hidden_sp = 0;
  double total() const { return compute + recompute + tp + sp; }
  Cost& operator+=(const Cost& o) {
    compute += o.compute, recompute += o.recompute, tp += o.tp, sp += o.sp;
    hidden_tp += o.hidden_tp, hidden_sp += o.hidden_sp;
    return *this;
  }
};

// What one micro-batch's passes over a piece cost: forward, backward (its input-gradient part
// when the schedule splits it) and the weight-gradient part.
struct PieceCost {
  Cost forward, backward, weight;
};

// The sizes and rates every sub-layer's cost is computed from.
struct Rates {
  double flops_per_s = 0, bytes_per_s = 0, act_bytes = 4;
  double tokens = 0;  // this rank's rows of one micro-batch: micro_batch · seq_len / sp
  double T = 0;       // the whole sequence
  double C = 0, Ckv = 0, F = 0, mlp_in = 0, V = 0;
  int tp = 1, sp = 1;
  bool ladder = false, tsp = false, ulysses = false;
  LinkCost tp_link, sp_link;
};

double matmul_s(const Rates& r, double flops) { return flops / r.flops_per_s; }
double memory_s(const Rates& r, double bytes) { return bytes / r.bytes_per_s; }

// One sub-layer's forward kernels: its matmuls (this rank's 1/tp), attention's scores and
// weighted values (causal: (T + 1) / 2 keys per query on average), and the memory-bound kernels
// around them (the pre-norm reads and writes C per token, the residual add 3·C, the activation
// or softmax reads and writes its input), in the backend's activation size.
struct SublayerTimes {
  double matmul = 0, core = 0, memory = 0, first_matmul = 0;
  double forward() const { return matmul + core + memory; }
};
SublayerTimes sublayer_times(const Rates& r, bool attention) {
  SublayerTimes t;
  const double n = r.tokens;
  if (attention) {
    const double qkv = 2.0 * n * (r.C + 2 * r.Ckv) * r.C / r.tp, proj = 2.0 * n * r.C * r.C / r.tp;
    t.first_matmul = matmul_s(r, qkv);
    t.matmul = matmul_s(r, qkv + proj);
    t.core = matmul_s(r, 2.0 * 2.0 * n * r.C * (r.T + 1) / 2.0 / r.tp);
    t.memory = memory_s(r, n * r.act_bytes * (5 * r.C + 2 * (r.C + 2 * r.Ckv) / r.tp));
  } else {
    const double in = 2.0 * n * r.mlp_in * r.C / r.tp, out = 2.0 * n * r.F * r.C / r.tp;
    t.first_matmul = matmul_s(r, in);
    t.matmul = matmul_s(r, in + out);
    t.memory = memory_s(r, n * r.act_bytes * (5 * r.C + 2 * r.mlp_in / r.tp));
  }
  return t;
}

// The exposed part of completing one sub-layer's output (forward) or input gradient (backward)
// over tp, `behind` seconds of the next sub-layer's work able to hide it (Ladder), `own` the
// work a sequence-parallel gather hides (the rank's own rows of the next matmul).
void tp_complete(const Rates& r, double behind, double own, Cost& c) {
  if (r.tp == 1) return;
  const double bytes = r.tokens * r.C * r.act_bytes;
  if (!r.tsp) {
    const double t = collective_seconds(Collective::kAllReduce, bytes, r.tp, r.tp_link);
    const double hidden = r.ladder ? std::min(t, behind) : 0.0;
    c.tp += t - hidden;
    c.hidden_tp += hidden;
    return;
  }
  const double rs = collective_seconds(Collective::kReduceScatter, bytes, r.tp, r.tp_link);
  const double ag = collective_seconds(Collective::kAllGather, bytes, r.tp, r.tp_link);
  const double hidden = (r.ladder ? std::min(rs, behind) : 0.0) + std::min(ag, own);
  c.tp += rs + ag - hidden;
  c.hidden_tp += hidden;
}

// Attention's sequence-parallel communication in forward (backward: `backward`): the ring
// passes each rank's keys and values (and in backward their gradients too) sp − 1 times, each
// hidden behind one block's attention; Ulysses swaps q, k, v and the output in all-to-alls.
void sp_attention(const Rates& r, double core, bool backward, Cost& c) {
  if (r.sp == 1) return;
  const double passes = backward ? 2.0 : 1.0;
  if (r.ulysses) {
    const double bytes = r.tokens * (2 * r.C + 2 * r.Ckv) / r.tp * r.act_bytes;
    c.sp += passes * collective_seconds(Collective::kAllToAll, bytes, r.sp, r.sp_link);
    return;
  }
  const double block = r.tokens * 2 * r.Ckv / r.tp * r.act_bytes * passes;
  const double t = collective_seconds(Collective::kSendRecv, block, 2, r.sp_link);
  const double behind = core * passes / r.sp;
  c.sp += (r.sp - 1) * std::max(0.0, t - behind);
  c.hidden_sp += (r.sp - 1) * std::min(t, behind);
}

// Forward, input-gradient and weight-gradient passes of one unrolled position (two sub-layers),
// `again` times its forward recomputed in backward.
PieceCost position_cost(const Rates& r, double again) {
  PieceCost pc;
  const SublayerTimes sub[2] = {sublayer_times(r, true), sublayer_times(r, false)};
  for (int i = 0; i < 2; ++i) {
    const SublayerTimes& s = sub[i];
    const SublayerTimes& next = sub[1 - i];
    pc.forward.compute += s.forward();
    tp_complete(r, next.forward(), next.first_matmul / r.tp, pc.forward);
    if (i == 0) sp_attention(r, s.core, false, pc.forward);
    // Backward: the input gradients (matmuls once more, attention's core and the memory-bound
    // kernels twice over) and the weight gradients (the matmuls once more).
    pc.backward.compute += s.matmul + 2 * s.core + 2 * s.memory;
    pc.weight.compute += s.matmul;
    tp_complete(r, next.matmul + 2 * next.core, s.matmul / r.tp, pc.backward);
    if (i == 0) sp_attention(r, s.core, true, pc.backward);
    pc.backward.recompute += again * s.forward();
  }
  return pc;
}

// How many times train.recompute runs position p's forward again in backward (its plan, core/
// model_segments.cpp): once for every position under LOOP_BOUNDARY; under SQRT a loop position
// twice (its segment once to keep each unit's start, then its unit), except the last unit of its
// segment of ⌈√R⌉ iterations, whose average this counts.
double recompute_times(const config::RunConfig& cfg, Recompute policy, int p) {
  if (policy == Recompute::kNone) return 0.0;
  const auto& m = cfg.model();
  const int begin = m.prelude_layers(), end = begin + m.block_layers() * m.loops();
  if (policy == Recompute::kLoopBoundary || p < begin || p >= end) return 1.0;
  const double group = std::ceil(std::sqrt(static_cast<double>(m.loops())));
  return 2.0 - 1.0 / group;
}

Rates rates_of(const config::RunConfig& cfg, const ParallelLayout& layout,
               const ClusterConfig& cluster) {
  const auto& m = cfg.model();
  const ClusterConfig::Device& d = cluster.device();
  Rates r;
  r.act_bytes = layout.bf16 ? 2.0 : 4.0;
  r.flops_per_s = (layout.bf16 ? d.bf16_tflops() : d.fp32_tflops()) * 1e12 * d.gemm_efficiency();
  r.bytes_per_s = d.memory_gbs() * 1e9 * d.memory_efficiency();
  r.tp = layout.mesh.tp;
  r.sp = layout.mesh.sp;
  r.T = cfg.train().seq_len();
  r.tokens = static_cast<double>(cfg.train().micro_batch()) * r.T / r.sp;
  r.C = m.d_model();
  r.Ckv = model_kv_heads(m) * (r.C / m.n_heads());
  r.F = m.d_mlp();
  r.mlp_in = m.mlp() == config::ModelConfig::SWIGLU ? 2 * r.F : r.F;
  r.V = m.vocab_size();
  r.ladder = m.residual() == config::ModelConfig::LADDER;
  r.tsp = layout.tp_sequence;
  r.ulysses = layout.sequence_method == SequenceMethod::kUlysses;
  r.tp_link = group_link(cluster, layout.mesh, Axis::kTensor);
  r.sp_link = group_link(cluster, layout.mesh, Axis::kSequence);
  return r;
}

// One micro-batch's passes over piece g: its positions, the embedding on the first piece, the
// final norm and the LM head on the last (whose weight gradient and input gradient the forward
// computes, the vocabulary-parallel cross-entropy completing the latter over tp).
PieceCost piece_cost(const config::RunConfig& cfg, const ParallelLayout& layout, const Rates& r,
                     int g) {
  PieceCost pc;
  const std::vector<int>& bounds = layout.stages.bounds;
  for (int p = bounds[g]; p < bounds[g + 1]; ++p) {
    const PieceCost one = position_cost(r, recompute_times(cfg, layout.recompute, p));
    pc.forward += one.forward;
    pc.backward += one.backward;
    pc.weight += one.weight;
  }
  const double stream = r.tokens * r.C * r.act_bytes;
  if (g == 0) {
    pc.forward.compute += memory_s(r, 2 * stream);
    tp_complete(r, 0, 0, pc.forward);
    pc.backward.compute += memory_s(r, 2 * stream);
  }
  if (g + 1 == layout.stages.pieces()) {
    pc.forward.compute += matmul_s(r, 3 * 2.0 * r.tokens * r.C * r.V / r.tp) +
                          memory_s(r, 4 * r.tokens * r.V / r.tp * r.act_bytes);
    if (r.tp > 1)
      pc.forward.tp += collective_seconds(Collective::kAllReduce, stream, r.tp, r.tp_link);
  }
  return pc;
}

// The gradients of weights held on several pipeline stages summed over them after the last
// backward, fp32 (core/pipeline.h, ReplicaSync): each shared-block layer over the stages that
// run one of its iterations, a tied embedding over the first and last stage. One all-reduce per
// set of holders, of this tp rank's share.
double replica_seconds(const config::RunConfig& cfg, const ParallelLayout& layout,
                       const ClusterConfig& cluster) {
  const auto& m = cfg.model();
  const StagePlan& plan = layout.stages;
  if (layout.mesh.pp == 1) return 0.0;
  TensorParallel tp;
  tp.size = layout.mesh.tp;
  const Model whole = model_layout(m, make_host_backend(cfg.runtime()), tp);
  const LinkCost link = group_link(cluster, layout.mesh, Axis::kPipeline);
  auto rank_at = [&](int position) {
    int g = 0;
    while (plan.bounds[g + 1] <= position) ++g;
    return stage_plan_rank_of(plan, g);
  };
  double seconds = 0;
  const int begin = m.prelude_layers(), K = m.block_layers();
  for (int u = begin; u < begin + K; ++u) {
    std::vector<int> holders;
    for (int r = 0; r < m.loops(); ++r) holders.push_back(rank_at(begin + r * K + (u - begin)));
    std::sort(holders.begin(), holders.end());
    holders.erase(std::unique(holders.begin(), holders.end()), holders.end());
    if (holders.size() > 1)
      seconds +=
          collective_seconds(Collective::kAllReduce, 4.0 * whole.layout.layer_ranges[u].size(),
                             static_cast<int>(holders.size()), link);
  }
  if (m.tie_embeddings() && rank_at(0) != rank_at(plan.positions() - 1))
    seconds += collective_seconds(Collective::kAllReduce, 4.0 * whole.layout.embedding_range.size(),
                                  2, link);
  return seconds;
}

}  // namespace

namespace {

// What action `a` of pipeline rank `rank` costs: its piece's forward, weight pass, or backward
// (with the weight pass unless the schedule splits it).
Cost action_cost(const std::vector<PieceCost>& pieces, const ParallelLayout& layout, int rank,
                 const PipelineAction& a) {
  using Type = PipelineAction::Type;
  const bool v_shape = pipeline_v_shape(layout.pipeline);
  const PieceCost& c = pieces[pipeline_stage_of(layout.mesh.pp, v_shape, rank, a.chunk)];
  if (a.type == Type::kForward) return c.forward;
  if (a.type == Type::kWeight) return c.weight;
  Cost b = c.backward;
  const bool split = layout.pipeline == PipelineKind::kZeroBubbleH1 ||
                     layout.pipeline == PipelineKind::kZeroBubbleV;
  if (!split) b += c.weight;
  return b;
}

// The pipeline's parts: the schedule run in simulated time without and with the boundary
// sends; the critical rank (the last to finish without them), its work by kind, its idle time
// and what the sends add. Returns that rank.
int pipeline_parts(const config::RunConfig& cfg, const ParallelLayout& layout,
                   const ClusterConfig& cluster, const Rates& r,
                   const std::vector<PieceCost>& pieces, StepPrediction& out) {
  const Mesh& mesh = layout.mesh;
  const int p = mesh.pp, m = layout.micro_batches, v = layout.stages.virtual_stages;
  const double rows = r.tokens / (layout.tp_sequence ? r.tp : 1);
  const int carried = cfg.model().residual() == config::ModelConfig::LADDER ? 2 : 1;
  const double boundary =
      (carried + (cfg.model().input_injection() ? 1 : 0)) * rows * r.C * r.act_bytes;
  // Which rank of the mesh is pipeline rank s of the first dp, sp and tp coordinates.
  auto global = [&](int s) { return mesh_rank(mesh, MeshCoord{0, s, 0, 0}); };
  auto duration = [&](int rank, const PipelineAction& a) {
    return action_cost(pieces, layout, rank, a).total();
  };
  auto send = [&](int a, int b) {
    return collective_seconds(Collective::kSendRecv, boundary, 2,
                              link_between(cluster, global(a), global(b)));
  };
  const PipelineTiming timed = pipeline_timed(layout.pipeline, p, m, v, duration, send);
  const PipelineTiming idle =
      pipeline_timed(layout.pipeline, p, m, v, duration, [](int, int) { return 0.0; });
  const int critical =
      static_cast<int>(std::max_element(idle.end.begin(), idle.end.end()) - idle.end.begin());
  using Type = PipelineAction::Type;
  Cost busy;
  for (const PipelineAction& a : pipeline_schedule(layout.pipeline, p, m, v, critical))
    if (a.type == Type::kForward || a.type == Type::kBackward || a.type == Type::kWeight)
      busy += action_cost(pieces, layout, critical, a);
  out.compute = busy.compute;
  out.recompute = busy.recompute;
  out.tp = busy.tp;
  out.sp = busy.sp;
  out.hidden_tp = busy.hidden_tp;
  out.hidden_sp = busy.hidden_sp;
  out.bubble = std::max(0.0, idle.makespan - busy.total());
  out.pp_p2p = std::max(0.0, timed.makespan - idle.makespan);
  return critical;
}

// After the last backward: the gradient reduction over dp × sp (what the last micro-batch's
// backward on `rank` did not hide, and under ZeRO-2 the earlier micro-batches' reductions; ZeRO's
// parameter gather), the shared weights' sum over
// stages, AdamW over the rank's parameters or shard.
void after_backward_parts(const config::RunConfig& cfg, const ParallelLayout& layout,
                          const ClusterConfig& cluster, const Rates& r,
                          const std::vector<PieceCost>& pieces, int rank, StepPrediction& out) {
  const Mesh& mesh = layout.mesh;
  const StageMemory stage = stage_memory(cfg, layout, rank);
  const int reduce = layout.reduce_ranks();
  if (reduce > 1) {
    // dp × sp: on the network when either of its axes' groups crosses nodes.
    LinkCost link = group_link(cluster, mesh, Axis::kData);
    if (!link.inter_node) link = r.sp_link;
    const double grads =
        collective_seconds(layout.zero ? Collective::kReduceScatter : Collective::kAllReduce,
                           stage.params * (layout.bf16_grad_reduce ? 2.0 : 4.0), reduce, link);
    double last_backward = 0;
    for (int c = 0; c < layout.stages.virtual_stages; ++c) {
      const PieceCost& pc =
          pieces[pipeline_stage_of(mesh.pp, pipeline_v_shape(layout.pipeline), rank, c)];
      last_backward += pc.backward.total() + pc.weight.total();
    }
    out.hidden_dp = layout.overlap_grad_reduce ? std::min(grads, last_backward) : 0.0;
    out.dp = grads - out.hidden_dp;
    if (layout.zero_grads && layout.micro_batches > 1) {
      // ZeRO-2 also reduces the per-micro-batch layers in every earlier micro-batch, behind
      // those micro-batches' backwards.
      const int earlier = layout.micro_batches - 1;
      const double more = earlier * collective_seconds(Collective::kReduceScatter,
                                                       stage.grads_per_micro * 4.0, reduce, link);
      const double hidden = std::min(more, earlier * last_backward);
      out.hidden_dp += hidden;
      out.dp += more - hidden;
    }
    if (layout.zero)
      out.dp += collective_seconds(Collective::kAllGather, stage.params * 4.0, reduce, link);
  }
  out.replica = replica_seconds(cfg, layout, cluster);
  out.optimizer = memory_s(
      r, (layout.zero ? stage.optimizer / 2.0 : stage.params) * 7 * 4.0 + stage.weight_copy_bytes);
}

}  // namespace

StepPrediction predict_step(const config::RunConfig& cfg, const ParallelLayout& layout,
                            const ClusterConfig& cluster, int nodes) {
  const Mesh& mesh = layout.mesh;
  const long devices = static_cast<long>(nodes) * cluster.devices_per_node();
  if (nodes < 1 || devices < mesh.world_size())
    throw Error("the layout needs " + std::to_string(mesh.world_size()) + " devices but " +
                std::to_string(nodes) + " node(s) of " + cluster.name() + " have " +
                std::to_string(devices) + "; raise --nodes or shrink the layout");
  const Rates r = rates_of(cfg, layout, cluster);
  std::vector<PieceCost> pieces;
  for (int g = 0; g < layout.stages.pieces(); ++g) pieces.push_back(piece_cost(cfg, layout, r, g));
  StepPrediction out;
  const int critical = pipeline_parts(cfg, layout, cluster, r, pieces, out);
  after_backward_parts(cfg, layout, cluster, r, pieces, critical, out);
  double largest = -1;
  for (const auto& [name, seconds] : out.parts()) {
    out.step += seconds;
    if (seconds > largest) {
      largest = seconds;
      out.critical = name;
    }
  }
  const Model whole = model_layout(cfg.model(), make_host_backend(cfg.runtime()));
  const double tokens = static_cast<double>(cfg.train().global_batch()) * r.T;
  out.model_flops = model_train_flops_per_token(whole, static_cast<int>(r.T)) * tokens;
  out.tokens_per_s = tokens / out.step;
  const double peak =
      (layout.bf16 ? cluster.device().bf16_tflops() : cluster.device().fp32_tflops()) * 1e12;
  out.mfu = out.model_flops / (out.step * mesh.world_size() * peak);
  return out;
}

}  // namespace loom
