// `loom plan`: what a config's parallel layout means, without starting anything: the mesh, every
// process group as global ranks, gradient accumulation, the pipeline stages, and memory per rank
// as `loom train` allocates it (core/memory_model.h), judged against the machines the layout is
// for: a per-rank budget (--memory-gb), or this machine when the layout would start here. The
// report's sections are launcher/plan_report.h's.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/cluster.h"
#include "core/config.h"
#include "core/memory_model.h"
#include "core/model.h"
#include "core/parallel_layout.h"
#include "core/stage_plan.h"
#include "core/time_model.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/hosts.h"
#include "launcher/plan_report.h"
#include "launcher/spawn.h"
#include "parallel/mesh.h"
#include "parallel/placement.h"

namespace loom {
namespace {

constexpr const char* kCommand = "loom plan";  // how its messages begin

constexpr const char* kHelp =
    R"(usage: loom plan CONFIG [--set path.to.field=value]... [--memory-gb X]
                 [--hostfile FILE | --hosts a:4,b:4] [--allow-cross-node-tp]
                 [--cluster FILE [--nodes N] [--search [--top K]]]

Shows what CONFIG's parallel layout (parallel.dp, tp, pp, sp) means, without starting anything:
  - the world size and dp × pp × sp × tp,
  - every process group (tp, sp, dp, pp, and dp×sp: the ranks that hold the same weights) as
    lists of global ranks (rank = ((pp·DP + dp)·SP + sp)·TP + tp); over 64 ranks one row per
    kind: how many groups of what size, the first two groups and the last,
  - the batch: micro-batches accumulated per optimizer step on each rank,
  - memory per rank in MiB, as `loom train` allocates it, of the largest pipeline stage:
    parameters, gradients, AdamW state (sharded over dp with parallel.zero_stage=1),
    activations (for the pipeline schedule's micro-batches in flight; with sp > 1 the rank's
    T / sp rows of each sequence and ring attention's buffers), total; the same stage's
    activations and total under each train.recompute policy,
  - with pp > 1: the schedule and its bubble fraction, and a table of one row per stage: its
    parameters, AdamW state, activations and total, and its unrolled layers in words
    ("block.0–1 × iterations 3–5"),
  - with --memory-gb X: the longest train.seq_len this layout trains within X GiB per rank
    (every stage; model.max_seq_len, and a learned position table, grown to it), in steps of
    what sp requires,
  - with --hostfile or --hosts (as for `loom train`), or inside a Slurm allocation: the node
    each rank lands on (ranks fill one node's slots, then the next) and the groups that span
    nodes; a tp group across nodes is an error, as for `loom train`, unless
    --allow-cross-node-tp.
  - with --cluster FILE (cluster/*.textproto): the predicted step time on N nodes of it (default:
    as few as hold the layout's ranks), part by part (compute, recomputation, the tp, sp,
    pipeline and dp communication not hidden, the bubble of the simulated schedule, the shared
    weights' sum, AdamW), what the overlaps hide, tokens/s, MFU and the critical part; the
    memory verdict is then against the cluster's device memory unless --memory-gb says else.
Then whether the layout fits: with --memory-gb X, each rank against X GiB (the budget of one
GPU or of one rank's share of a node); else, when `loom train` would start every rank on this
machine (no hostfile, no Slurm, at most 8 ranks per core), all ranks against this machine's
available memory; else (a layout for other machines) the need per rank, without a verdict.
Exit status 1 when it does not fit, or when the layout does not divide the model or the batch
(the message suggests values that do).

  --set k=v        override one config field, e.g. --set parallel.tp=2 (repeatable, applied in
                   order)
  --memory-gb X    memory per rank in GiB (2^30 bytes): the layout is judged against it instead
                   of this machine, and the longest sequence within it is searched
  --hostfile FILE  an Open MPI hostfile (`host slots=N` lines)
  --hosts LIST     nodes and slots, e.g. node1:4,node2:4
  --allow-cross-node-tp  accept tp groups that span nodes
  --cluster FILE   a cluster description (configs/loom.proto, ClusterConfig) to predict the
                   step time on
  --nodes N        nodes of that cluster (default: the fewest that hold the layout)
  --search         with --cluster and --nodes: instead of CONFIG's layout, every layout of its
                   model and global batch on all the nodes' devices (dp · tp · pp · sp, the
                   micro-batch, 1F1B, interleaved, ZB-H1 and ZB-V, each recompute policy and
                   ZeRO stage), judged by the memory model against the device's memory (or
                   --memory-gb) and by the step-time model; prints the fastest that fit, what
                   each loses against the best, the best as --set assignments, and the faster
                   shapes that do not fit. Exit status 1 when none fits.
  --top K          how many layouts --search prints (default 10)
)";

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Where `loom train` would start the layout's ranks.
struct Target {
  std::vector<NodeSlots> nodes;  // named by --hostfile/--hosts or the Slurm allocation
  std::string nodes_from;        // "--hostfile FILE", "--hosts", "the Slurm allocation"
  bool in_slurm = false;
  bool slurm_nodes = false;  // `nodes` are the allocation's
  int cores = 1;             // this machine's
};

Target plan_target(const Args& args, const Mesh& mesh) {
  if (args.has("--hostfile") && args.has("--hosts"))
    throw Error("give either --hostfile or --hosts, not both");
  Target t;
  t.cores = this_host().cores;
  try {
    t.in_slurm = detect_launch_environment(process_environment()).in_slurm_allocation;
  } catch (const Error&) {  // a step srun started: on the allocation's nodes all the same
    t.in_slurm = true;
  }
  if (args.has("--hostfile")) {
    t.nodes = hostfile_read(args.value("--hostfile", ""));
    t.nodes_from = "--hostfile " + args.value("--hostfile", "");
  } else if (args.has("--hosts")) {
    t.nodes = hosts_parse(args.value("--hosts", ""));
    t.nodes_from = "--hosts";
  } else if (t.in_slurm && mesh.world_size() > 1) {
    t.nodes = slurm_allocation_nodes(process_environment());
    t.nodes_from = "the Slurm allocation";
    t.slurm_nodes = true;
  }
  return t;
}

// Why the layout is for other machines than this one, or "" when `loom train` would start all
// its ranks here (and check them against this machine).
std::string elsewhere(const Target& t, const Mesh& mesh) {
  if (!t.nodes.empty()) return "its ranks go on the nodes of " + t.nodes_from;
  if (t.in_slurm) return "its ranks go on the nodes of the Slurm allocation";
  if (mesh.world_size() > kLocalRanksPerCore * t.cores)
    return std::to_string(mesh.world_size()) + " ranks, more than " +
           std::to_string(kLocalRanksPerCore) + " per core of this machine's " +
           std::to_string(t.cores) + " cores";
  return "";
}

// "816.0 MiB per rank", or with stages "up to 816.0 MiB per rank (stage 1 of 8, the largest)".
std::string need_text(const LayoutMemory& memory) {
  if (memory.stages.size() == 1) return memory_size_text(memory.bytes()) + " per rank";
  return "up to " + memory_size_text(memory.bytes()) + " per rank (stage " +
         std::to_string(memory.largest) + " of " + std::to_string(memory.stages.size()) +
         ", the largest)";
}

// The verdict on memory, and the exit status: against --memory-gb per rank, this machine when
// the layout would start here, or no verdict for other machines of unknown memory.
int judge_memory(const config::RunConfig& cfg, const LayoutMemory& memory, const Mesh& mesh,
                 const Target& target, double budget_gib, int ranks_per_node) {
  const int world = mesh.world_size();
  const std::string ranks = std::to_string(world) + " rank" + (world == 1 ? "" : "s");
  if (budget_gib > 0) {
    char budget[64];
    std::snprintf(budget, sizeof(budget), "--memory-gb %g (%s per rank)", budget_gib,
                  memory_size_text(budget_gib * kGiB).c_str());
    if (memory.bytes() > budget_gib * kGiB) {
      plan_print_verdict("cannot run this layout within " + std::string(budget) + ":",
                         "it needs " + need_text(memory) + ": " + memory_breakdown(memory.peak()) +
                             ". Shrink the largest, or spread the model over more ranks");
      return 1;
    }
    plan_print_verdict("can run this layout (" + ranks + ") within " + budget + ":",
                       "it needs " + need_text(memory));
    return 0;
  }
  const std::string away = elsewhere(target, mesh);
  const bool gpu = cfg.runtime().device() != config::RuntimeConfig::CPU;
  if (away.empty() && !gpu) {
    const double available = host_available_bytes();
    const std::string problem = memory_problem(memory, world, available, "this machine", kCommand);
    if (!problem.empty()) {
      plan_print_verdict("cannot run this layout on this machine:", problem);
      return 1;
    }
    plan_print_verdict(
        "can run this layout on this machine (" + ranks + "):",
        "it needs " + need_text(memory) +
            (available > 0 ? "; " + memory_size_text(available) + " are available" : ""));
    return 0;
  }
  std::string node;
  if (ranks_per_node > 1)
    node = ", " + memory_size_text(memory.bytes() * ranks_per_node) + " on the fullest node (" +
           std::to_string(ranks_per_node) + " ranks)";
  plan_print_verdict(
      away.empty() ? "each rank runs on a GPU (" + ranks + "):"
                   : "a layout for other machines (" + away + "):",
      "it needs " + need_text(memory) + node +
          ". Their memory is not known here: give --memory-gb X (one GPU's memory, or "
          "one rank's share of a node) to judge it");
  return 0;
}

double memory_gb(const Args& args) {
  if (!args.has("--memory-gb")) return 0;
  const std::string text = args.value("--memory-gb", "");
  char* end = nullptr;
  const double gib = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(gib > 0) || gib > 1e9)
    throw Error("--memory-gb: \"" + text + "\" is not a positive number of GiB");
  return gib;
}

void print_summary(const std::string& config_path, const config::RunConfig& cfg,
                   const ParallelLayout& layout) {
  const Mesh& mesh = layout.mesh;
  const config::ModelConfig& m = cfg.model();
  const config::TrainConfig& t = cfg.train();
  const Model model = model_layout(m);
  std::printf("plan of %s (nothing is started)\n\n", config_path.c_str());
  std::printf("  world size  %d = dp %d × pp %d × sp %d × tp %d\n", mesh.world_size(), mesh.dp,
              mesh.pp, mesh.sp, mesh.tp);
  std::printf(
      "  model       %zu parameters, %d unrolled layers (prelude %d, block %d × loops %d, "
      "coda %d)\n",
      model.layout.num_params, unrolled_layers(m), m.prelude_layers(), m.block_layers(), m.loops(),
      m.coda_layers());
  std::printf(
      "  batch       global_batch %d = micro_batch %d × dp %d × %d accumulation step%s "
      "per rank; seq_len %d",
      t.global_batch(), t.micro_batch(), mesh.dp, layout.micro_batches,
      layout.micro_batches == 1 ? "" : "s", t.seq_len());
  if (mesh.sp > 1) std::printf(" (%d tokens per sp rank)", t.seq_len() / mesh.sp);
  std::printf("\n");
}

// --nodes N: a positive count.
int cluster_nodes(const std::string& text) {
  char* end = nullptr;
  const long n = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || n < 1 || n > 1000000)
    throw Error("--nodes: \"" + text + "\" is not a positive number of nodes");
  return static_cast<int>(n);
}

// --search: every layout on --nodes nodes of --cluster, the best first.
int search(const config::RunConfig& cfg, const Args& args,
           const std::optional<ClusterConfig>& cluster, double budget_gib) {
  if (!cluster || !args.has("--nodes"))
    throw Error("--search needs --cluster FILE and --nodes N: the devices to lay the model on");
  if (args.has("--hostfile") || args.has("--hosts"))
    throw Error(
        "--search lays the model on --cluster's nodes; --hostfile and --hosts are for "
        "one layout's placement");
  int top = 10;
  if (args.has("--top")) {
    const std::string text = args.value("--top", "");
    char* end = nullptr;
    const long n = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || n < 1 || n > 1000)
      throw Error("--top: \"" + text + "\" is not a number of layouts from 1 to 1000");
    top = static_cast<int>(n);
  }
  kernels::cpu::init_threads(std::max(1, cfg.runtime().threads()));
  const int nodes = cluster_nodes(args.value("--nodes", ""));
  const LayoutSearch found =
      search_layouts(cfg, *cluster, nodes, budget_gib * 1024.0 * 1024.0 * 1024.0);
  plan_print_search(found, *cluster, nodes, budget_gib, top);
  return found.fitting.empty() ? 1 : 0;
}

}  // namespace

int command_plan(int argc, char** argv) {
  const Args args = parse_args("plan", argv, argc,
                               {{"--set", true},
                                {"--memory-gb", false},
                                {"--hostfile", false},
                                {"--hosts", false},
                                {"--cluster", false},
                                {"--nodes", false},
                                {"--top", false}},
                               {"--allow-cross-node-tp", "--search"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one CONFIG file (see loom plan --help)");
  const std::string config_path = args.positional[0];
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  if (args.has("--nodes") && !args.has("--cluster"))
    throw Error("--nodes says how many nodes of a --cluster; give --cluster FILE too");
  const std::optional<ClusterConfig> cluster =
      args.has("--cluster") ? std::optional(load_cluster(args.value("--cluster", "")))
                            : std::nullopt;
  double budget_gib = memory_gb(args);
  if (cluster && budget_gib == 0) budget_gib = cluster->device().memory_gib();
  if (args.flag("--search")) return search(cfg, args, cluster, budget_gib);
  const ParallelLayout layout = parallel_layout(cfg);
  const Mesh& mesh = layout.mesh;
  const Target target = plan_target(args, mesh);

  // Threads a rank would use: runtime.threads, or (0) its share of this host's cores, as
  // `loom train` places ranks with mpirun.
  const int threads = cfg.runtime().threads() > 0 ? cfg.runtime().threads()
                                                  : std::max(1, target.cores / mesh.world_size());
  kernels::cpu::init_threads(threads);

  print_summary(config_path, cfg, layout);
  plan_print_groups(mesh);
  const LayoutMemory memory = layout_memory(cfg, layout);
  plan_print_memory(cfg, layout, memory, threads);
  if (budget_gib > 0) plan_print_longest_sequence(cfg, budget_gib);
  if (cluster) {
    const int per_node = cluster->devices_per_node();
    const int nodes = args.has("--nodes") ? cluster_nodes(args.value("--nodes", ""))
                                          : (mesh.world_size() + per_node - 1) / per_node;
    plan_print_step_time(predict_step(cfg, layout, *cluster, nodes), *cluster, nodes, mesh);
  }

  int ranks_per_node = 0;  // the fullest node's, where nodes are named
  if (!target.nodes.empty()) {
    long slots = 0;
    for (const NodeSlots& n : target.nodes) slots += n.slots;
    if (target.slurm_nodes && slots < mesh.world_size()) {
      std::printf(
          "\nplacement: the Slurm allocation has %ld task slots, fewer than the layout's "
          "%d ranks: loom train needs an allocation of %d tasks\n",
          slots, mesh.world_size(), mesh.world_size());
    } else {
      const Placement placement = placement_fill(target.nodes, mesh.world_size());
      ranks_per_node = plan_print_placement(mesh, placement);
      const std::string tp_problem = cross_node_tp_problem(mesh, placement);
      if (!tp_problem.empty() && !args.flag("--allow-cross-node-tp")) {
        plan_print_verdict("cannot run this placement:", tp_problem);
        return 1;
      }
    }
  }
  return judge_memory(cfg, memory, mesh, target, budget_gib, ranks_per_node);
}

}  // namespace loom
