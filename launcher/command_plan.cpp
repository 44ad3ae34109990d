// `loom plan`: what a config's parallel layout means, without starting anything: the mesh, every
// process group as global ranks, gradient accumulation, the pipeline stages, and memory per rank
// as `loom train` allocates it (core/pipeline.h stage_memory), and the longest sequence a memory
// budget allows.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/config.h"
#include "core/loop_sampling.h"
#include "core/model.h"
#include "core/parallel_layout.h"
#include "core/pipeline.h"
#include "core/run_dir.h"
#include "core/stage_plan.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/hosts.h"
#include "launcher/spawn.h"
#include "parallel/mesh.h"
#include "parallel/placement.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom plan CONFIG [--set path.to.field=value]... [--memory-gb X]
                 [--hostfile FILE | --hosts a:4,b:4] [--allow-cross-node-tp]

Shows what CONFIG's parallel layout (parallel.dp, tp, pp, sp) means, without starting anything:
  - the world size and dp × pp × sp × tp,
  - every process group (tp, sp, dp, pp, and dp×sp: the ranks that hold the same weights) as
    lists of global ranks (rank = ((pp·DP + dp)·SP + sp)·TP + tp; first groups only for > 64
    ranks),
  - the batch: micro-batches accumulated per optimizer step on each rank,
  - memory per rank in MiB, as `loom train` allocates it: parameters, gradients, AdamW state
    (sharded over dp with parallel.zero_stage=1), activations (for the pipeline schedule's
    micro-batches in flight; with sp > 1 the rank's T / sp rows of each sequence and ring
    attention's buffers), total,
  - with pp > 1: the schedule and its bubble fraction, and for each stage its unrolled layers in
    words ("block.0–1 × iterations 3–5"), parameters (a shared block once), gradients,
    optimizer state and activations,
  - with --memory-gb X: the longest train.seq_len this layout trains within X GiB per rank
    (every stage; model.max_seq_len, and a learned position table, grown to it), in steps of
    what sp requires,
  - with --hostfile or --hosts (as for `loom train`): the node each rank lands on (ranks fill
    one node's slots, then the next) and the groups that span nodes; a tp group across nodes
    is an error, as for `loom train`, unless --allow-cross-node-tp.
The config is validated as `loom train` does: a layout that does not divide the model or the
batch is an error (exit status 1).

  --set k=v        override one config field, e.g. --set parallel.tp=2 (repeatable, applied in
                   order)
  --memory-gb X    a memory budget per rank in GiB (2^30 bytes) for the longest-sequence search
  --hostfile FILE  an Open MPI hostfile (`host slots=N` lines)
  --hosts LIST     nodes and slots, e.g. node1:4,node2:4
  --allow-cross-node-tp  accept tp groups that span nodes
)";

constexpr int kMaxListedRanks = 64;  // larger worlds list only their first groups
constexpr int kListedGroups = 4;
constexpr double kMiB = 1024.0 * 1024.0;

// `s` padded with spaces to `width` columns (UTF-8: "×" is one column, two bytes).
std::string pad(std::string s, size_t width) {
  size_t columns = 0;
  for (unsigned char c : s) columns += (c & 0xC0) != 0x80;
  if (columns < width) s.append(width - columns, ' ');
  return s;
}

std::string format_group(const std::vector<int>& ranks) {
  std::string s = "{";
  auto add = [&](int r) {
    if (s.size() > 1) s += ',';
    s += std::to_string(r);
  };
  if (ranks.size() <= 16) {
    for (int r : ranks) add(r);
  } else {  // mesh groups are arithmetic progressions: the ends and the stride say it all
    for (size_t i = 0; i < 3; ++i) add(ranks[i]);
    s += ",…,";
    s += std::to_string(ranks.back());
  }
  s += '}';
  if (ranks.size() > 16) {
    s += " (";
    s += std::to_string(ranks.size());
    s += " ranks)";
  }
  return s;
}

// Every distinct group of one kind, each ordered by global rank, the groups by their first rank.
// The first `limit` groups of one kind (ordered by their lowest rank) and how many there are, in
// time linear in the ranks listed: a group is found from its lowest rank, the one whose
// coordinates along the group's axes are 0.
std::vector<std::vector<int>> groups_of(const Mesh& mesh, const std::string& kind, size_t limit,
                                        size_t* count) {
  const bool data_sequence = kind == "dp×sp";
  const Axis axis = kind == "tp"   ? Axis::kTensor
                    : kind == "sp" ? Axis::kSequence
                    : kind == "dp" ? Axis::kData
                                   : Axis::kPipeline;
  const int size = data_sequence             ? mesh.dp * mesh.sp
                   : axis == Axis::kTensor   ? mesh.tp
                   : axis == Axis::kSequence ? mesh.sp
                   : axis == Axis::kData     ? mesh.dp
                                             : mesh.pp;
  *count = static_cast<size_t>(mesh.world_size() / size);
  std::vector<std::vector<int>> groups;
  for (int rank = 0; rank < mesh.world_size() && groups.size() < limit; ++rank) {
    const MeshCoord c = mesh_coord(mesh, rank);
    const bool lowest = data_sequence             ? c.dp == 0 && c.sp == 0
                        : axis == Axis::kTensor   ? c.tp == 0
                        : axis == Axis::kSequence ? c.sp == 0
                        : axis == Axis::kData     ? c.dp == 0
                                                  : c.pp == 0;
    if (!lowest) continue;
    std::vector<int> group;
    if (data_sequence) {
      for (int d : mesh_group(mesh, rank, Axis::kData))
        for (int s : mesh_group(mesh, d, Axis::kSequence)) group.push_back(s);
      std::sort(group.begin(), group.end());
    } else {
      group = mesh_group(mesh, rank, axis);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

void print_groups(const Mesh& mesh) {
  std::printf("\nprocess groups (global ranks)\n");
  for (const char* kind : {"tp", "sp", "dp", "pp", "dp×sp"}) {
    size_t count = 0;
    const std::vector<std::vector<int>> groups = groups_of(
        mesh, kind, mesh.world_size() > kMaxListedRanks ? kListedGroups : SIZE_MAX, &count);
    const size_t shown = groups.size();
    const std::string what = std::to_string(count) + " group" + (count == 1 ? "" : "s") + " of " +
                             std::to_string(groups[0].size());
    const std::string indent(28, ' ');
    std::string line = pad(pad(std::string("  ") + kind, 9) + what + "  ", indent.size());
    bool line_empty = true;  // no group on `line` yet
    for (size_t i = 0; i < shown; ++i) {
      const std::string g = format_group(groups[i]);
      if (!line_empty && line.size() + 1 + g.size() > 100) {
        std::printf("%s\n", line.c_str());
        line = indent;
        line_empty = true;
      }
      if (!line_empty) line += ' ';
      line += g;
      line_empty = false;
    }
    if (shown < count) line += " … (" + std::to_string(count - shown) + " more)";
    std::printf("%s\n", line.c_str());
  }
}

std::string mib(double bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%8.2f", bytes / kMiB);
  return buffer;
}

// The schedule, its bubble, and each stage: its unrolled layers in words, what it holds, and its
// activations under the schedule (slots of saved activations in flight, boundary buffers for
// transfers, shared temporaries) — exactly what `loom train` allocates.
void print_pipeline(const config::RunConfig& cfg, const ParallelLayout& layout,
                    const std::vector<StageMemory>& stages) {
  const Mesh& mesh = layout.mesh;
  const StagePlan& plan = layout.stages;
  const PipelineKind kind = layout.pipeline;
  const int m = layout.micro_batches, v = plan.virtual_stages;
  std::printf("\npipeline %s: %d stages × %d chunk%s, %d micro-batches per step; bubble %.1f%% "
              "(%s)\n",
              pipeline_kind_name(kind), mesh.pp, v, v == 1 ? "" : "s", m,
              100.0 * pipeline_bubble_fraction(kind, mesh.pp, m, v),
              kind == PipelineKind::kInterleaved1F1B ? "(p−1)/(v·m+p−1)"
              : kind == PipelineKind::kZeroBubbleH1  ? "simulated with F = B = W"
                                                     : "(p−1)/(m+p−1)");
  const std::vector<double> costs = stage_plan_costs(cfg, plan);
  const double most = *std::max_element(costs.begin(), costs.end());
  for (int r = 0; r < mesh.pp; ++r) {
    const StageMemory& s = stages[r];
    std::printf("  stage %d\n", r);
    for (int g : stage_plan_pieces(plan, r))
      std::printf("    unrolled layers %d–%d: %s (cost %.2f of the largest piece)\n",
                  plan.bounds[g], plan.bounds[g + 1] - 1,
                  stage_plan_describe(cfg.model(), plan.bounds[g], plan.bounds[g + 1]).c_str(),
                  costs[g] / most);
    std::printf("    MiB: parameters %.1f, gradients %.1f, optimizer %.1f, activations %.2f "
                "(%d × %.1f slots, %d × %.2f boundary buffers, %.1f shared)\n",
                4.0 * s.params / kMiB, 4.0 * s.params / kMiB, 4.0 * s.optimizer / kMiB,
                4.0 * s.arena.total / kMiB, s.slots, 4.0 * s.arena.slot / kMiB, s.boundaries,
                4.0 * s.arena.boundary / kMiB, 4.0 * s.arena.shared / kMiB);
  }
}

// The largest stage's activation arena under each train.recompute policy the layout can run,
// and the loop counts it is planned for when they vary.
void print_recompute(const config::RunConfig& cfg, const Mesh& mesh) {
  std::string line;
  for (auto policy : {config::TrainConfig::NONE, config::TrainConfig::LOOP_BOUNDARY,
                      config::TrainConfig::SQRT}) {
    config::RunConfig with = cfg;
    with.mutable_train()->set_recompute(policy);
    try {
      validate_config(with);
    } catch (const Error&) {
      continue;  // e.g. ZERO_BUBBLE_H1 keeps what recomputation would drop
    }
    const ParallelLayout layout = parallel_layout(with);
    double most = 0;
    for (int r = 0; r < mesh.pp; ++r)
      most = std::max(most, 4.0 * stage_memory(with, layout, r).arena.total);
    line += format("    %-14s %s", config::TrainConfig::Recompute_Name(policy).c_str(),
                   mib(most).c_str());
    if (policy == cfg.train().recompute()) line += "  (this run)";
    line += "\n";
  }
  std::printf("  activations by train.recompute%s:\n%s", mesh.pp > 1 ? " (largest stage)" : "",
              line.c_str());
  const LoopCounts loops = run_loop_counts(cfg);
  if (loops.min != loops.max)
    std::printf("  planned for every loop count from %d to %d (model.loops_sampling, "
                "train.eval_loops)\n",
                loops.min, loops.max);
}

// Memory of every pipeline stage as `loom train` allocates it (core/pipeline.h stage_memory),
// the largest stage's in the summary lines; with pp > 1 each stage's layers and figures.
void print_memory(const config::RunConfig& cfg, const ParallelLayout& layout, int threads) {
  const Mesh& mesh = layout.mesh;
  std::vector<StageMemory> stages;
  size_t largest = 0;
  auto total = [](const StageMemory& s) { return s.bytes(); };
  for (int r = 0; r < mesh.pp; ++r) {
    stages.push_back(stage_memory(cfg, layout, r));
    if (total(stages.back()) > total(stages[largest])) largest = stages.size() - 1;
  }
  const StageMemory& big = stages[largest];
  const bool zero = layout.zero;
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  const bool bf16 = layout.bf16;
  std::printf("\nmemory per rank (%s, MiB)\n",
              bf16 ? "BF16: fp32 master weights, gradients and AdamW state; bf16 activations"
                   : "FP32");
  std::printf("  parameters       %s   %zu floats%s\n", mib(4.0 * big.params).c_str(), big.params,
              mesh.pp > 1 ? (" (stage " + std::to_string(largest) + ", the largest)").c_str() : "");
  std::printf("  gradients        %s   as many as the parameters\n", mib(4.0 * big.params).c_str());
  std::printf("  optimizer state  %s   AdamW m and v%s\n", mib(4.0 * big.optimizer).c_str(),
              zero ? (", sharded over dp " + std::to_string(mesh.dp * mesh.sp) + " (ZeRO-1)").c_str()
                   : ", not sharded (parallel.zero_stage=0)");
  const double activations = 4.0 * big.arena.total;
  std::printf("  activations      %s   micro_batch %d × seq_len %d%s at %d thread%s; %d "
              "micro-batch%s in flight\n",
              mib(activations).c_str(), B, T,
              mesh.sp > 1 ? (" (" + std::to_string(T / mesh.sp) + " rows per sp rank)").c_str() : "",
              threads, threads == 1 ? "" : "s", big.slots, big.slots == 1 ? "" : "es");
  if (bf16)
    std::printf("  weight copy      %s   bf16 copy of the parameters the kernels read\n",
                mib(static_cast<double>(big.weight_copy_bytes)).c_str());
  if (big.reduce_bytes > 0)
    std::printf("  reduce buffers   %s   %s\n", mib(static_cast<double>(big.reduce_bytes)).c_str(),
                layout.bf16_grad_reduce
                    ? (zero ? "ZeRO-1 gradient shard, and gradients and shard in bf16 on the wire"
                            : "gradients in bf16 on the wire (parallel.grad_reduce_dtype BF16)")
                    : "ZeRO-1 gradient shard");
  std::printf("  total            %s\n", mib(big.bytes()).c_str());
  print_recompute(cfg, mesh);
  if (mesh.tp > 1)
    std::printf(
        "  tp %d: QKV, MLP and output matrices and the vocabulary split; norms and\n"
        "        row-parallel biases replicated\n",
        mesh.tp);
  if (mesh.sp > 1)
    std::printf("  sp %d: activations of the rank's rows; ring attention's key/value blocks and\n"
                "        gradients in flight (%.2f MiB of the shared temporaries)\n",
                mesh.sp,
                (bf16 ? 2.0 : 4.0) *
                    ring_workspace_activations(B, T / mesh.sp, cfg.model().d_model() / mesh.tp) /
                    kMiB);
  if (mesh.pp > 1) print_pipeline(cfg, layout, stages);
}

// Which node each rank lands on and which groups span nodes; returns the most ranks on one node.
int print_placement(const Mesh& mesh, const Placement& placement) {
  std::printf("\nplacement (ranks fill one node's slots, then the next)\n");
  std::vector<int> per_node(placement.nodes.size(), 0);
  for (int node : placement.node_of_rank) ++per_node[static_cast<size_t>(node)];
  std::printf("  %s\n", placement_summary(placement).c_str());
  std::printf("  groups across nodes:\n");
  for (const auto& [name, axis] : {std::pair{"tp", Axis::kTensor}, {"sp", Axis::kSequence},
                                   {"dp", Axis::kData}, {"pp", Axis::kPipeline}}) {
    const std::vector<std::vector<int>> crossing = groups_across_nodes(mesh, placement, axis);
    const size_t groups = static_cast<size_t>(mesh.world_size()) / mesh_group(mesh, 0, axis).size();
    std::string line = crossing.empty() ? "none" : std::to_string(crossing.size()) + " of " +
                                                        std::to_string(groups);
    for (size_t i = 0; i < crossing.size() && i < kListedGroups; ++i)
      line += (i == 0 ? ": " : "; ") + format_group(crossing[i]) + " on " +
              group_nodes(placement, crossing[i]);
    if (crossing.size() > kListedGroups) line += "; …";
    std::printf("    %s  %s\n", name, line.c_str());
  }
  return *std::max_element(per_node.begin(), per_node.end());
}

// Bytes per rank of the layout's largest stage: parameters, gradients, optimizer, activations.
double rank_bytes(const config::RunConfig& cfg) {
  const ParallelLayout layout = parallel_layout(cfg);
  double most = 0;
  for (int r = 0; r < layout.mesh.pp; ++r) {
    const StageMemory s = stage_memory(cfg, layout, r);
    most = std::max(most, s.bytes());
  }
  return most;
}

// The config at sequence length T (learned position tables grown to T when shorter).
config::RunConfig at_seq_len(config::RunConfig cfg, long T) {
  cfg.mutable_train()->set_seq_len(static_cast<int>(T));
  if (cfg.model().max_seq_len() < T) cfg.mutable_model()->set_max_seq_len(static_cast<int>(T));
  return cfg;
}

// The longest train.seq_len (a multiple of what the sequence layout needs) that the config's
// validation accepts (model.max_seq_len raised to it) and whose memory per rank is within the
// budget, by bisection (memory grows with T); 0 if even the shortest does not fit.
void print_longest_sequence(const config::RunConfig& cfg, double budget_gib) {
  const auto& p = cfg.parallel();
  const long unit = parallel_layout(cfg).sequence == SequenceLayout::kZigzag ? 2L * p.sp() : p.sp();
  const double budget = budget_gib * 1024.0 * kMiB;
  constexpr long kMaxTokens = 1L << 24;
  const long max_k = kMaxTokens / unit;
  auto fits = [&](long k) {
    const config::RunConfig at = at_seq_len(cfg, k * unit);
    try {
      validate_config(at);
    } catch (const Error&) {
      return false;
    }
    return rank_bytes(at) <= budget;
  };
  long lo = 0, hi = 1;  // fits(lo) (or lo = 0); !fits(hi) or hi past max_k
  while (hi <= max_k && fits(hi)) {
    lo = hi;
    hi *= 2;
  }
  hi = std::min(hi, max_k + 1);
  while (hi - lo > 1) {
    const long mid = lo + (hi - lo) / 2;
    (mid <= max_k && fits(mid) ? lo : hi) = mid;
  }
  std::printf("\nlongest sequence within %.3g GiB per rank\n", budget_gib);
  if (lo == 0) {
    std::printf("  none: even train.seq_len %ld needs %.1f MiB per rank\n", unit,
                rank_bytes(at_seq_len(cfg, unit)) / kMiB);
    return;
  }
  const long T = lo * unit;
  std::printf("  train.seq_len %ld (%ld tokens per sp rank): %.1f MiB per rank%s%s\n", T,
              T / p.sp(), rank_bytes(at_seq_len(cfg, T)) / kMiB,
              cfg.model().max_seq_len() < T ? "; with model.max_seq_len raised to it" : "",
              lo == max_k ? " (the search stops at 2^24 tokens)" : "");
}

}  // namespace

int command_plan(int argc, char** argv) {
  const Args args = parse_args(
      "plan", argv, argc,
      {{"--set", true}, {"--memory-gb", false}, {"--hostfile", false}, {"--hosts", false}},
      {"--allow-cross-node-tp"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one CONFIG file (see loom plan --help)");
  const std::string config_path = args.positional[0];
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  const ParallelLayout layout = parallel_layout(cfg);
  const Mesh& mesh = layout.mesh;
  const config::ModelConfig& m = cfg.model();
  const config::TrainConfig& t = cfg.train();
  const int unrolled = unrolled_layers(m);
  const Model model = model_layout(m);

  // Threads a rank would use: runtime.threads, or (0) its share of this host's cores, as
  // `loom train` places ranks with mpirun.
  const int cores = this_host().cores;
  const int threads = cfg.runtime().threads() > 0 ? cfg.runtime().threads()
                                                  : std::max(1, cores / mesh.world_size());
  kernels::cpu::init_threads(threads);

  std::printf("plan of %s (nothing is started)\n\n", config_path.c_str());
  std::printf("  world size  %d = dp %d × pp %d × sp %d × tp %d\n", mesh.world_size(), mesh.dp,
              mesh.pp, mesh.sp, mesh.tp);
  std::printf(
      "  model       %zu parameters, %d unrolled layers (prelude %d, block %d × loops %d, "
      "coda %d)\n",
      model.layout.num_params, unrolled, m.prelude_layers(), m.block_layers(), m.loops(),
      m.coda_layers());
  std::printf(
      "  batch       global_batch %d = micro_batch %d × dp %d × %d accumulation step%s "
      "per rank; seq_len %d",
      t.global_batch(), t.micro_batch(), mesh.dp, layout.micro_batches,
      layout.micro_batches == 1 ? "" : "s", t.seq_len());
  if (mesh.sp > 1) std::printf(" (%d tokens per sp rank)", t.seq_len() / mesh.sp);
  std::printf("\n");
  print_groups(mesh);
  print_memory(cfg, layout, threads);
  if (args.has("--memory-gb")) {
    const std::string text = args.value("--memory-gb", "");
    char* end = nullptr;
    const double gib = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !(gib > 0))
      throw Error("--memory-gb: \"" + text + "\" is not a positive number of GiB");
    print_longest_sequence(cfg, gib);
  }

  if (args.has("--hostfile") && args.has("--hosts"))
    throw Error("give either --hostfile or --hosts, not both");
  int ranks_here = mesh.world_size();  // ranks sharing one machine's memory
  if (args.has("--hostfile") || args.has("--hosts")) {
    const Placement placement =
        placement_fill(args.has("--hostfile") ? hostfile_read(args.value("--hostfile", ""))
                                              : hosts_parse(args.value("--hosts", "")),
                       mesh.world_size());
    ranks_here = print_placement(mesh, placement);
    const std::string tp_problem = cross_node_tp_problem(mesh, placement);
    if (!tp_problem.empty() && !args.flag("--allow-cross-node-tp")) {
      std::printf("\nloom train: refuses this placement: %s\n", tp_problem.c_str());
      return 1;
    }
  }
  // Ranks on one machine share its memory (with hosts: the fullest node, assumed like this one).
  const std::string problem = memory_problem(cfg, ranks_here, host_available_bytes());
  if (!problem.empty()) {
    std::printf("\nloom train: cannot run this layout on this machine: %s\n", problem.c_str());
    return 1;
  }
  std::printf("\nloom train: can run this layout (%d rank%s)\n", mesh.world_size(),
              mesh.world_size() == 1 ? "" : "s");
  return 0;
}

}  // namespace loom
