// `loom plan`: what a config's parallel layout means, without starting anything: the mesh, every
// process group as global ranks, gradient accumulation, and an estimate of memory per rank.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/spawn.h"
#include "parallel/mesh.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom plan CONFIG [--set path.to.field=value]...

Shows what CONFIG's parallel layout (parallel.dp, tp, pp, sp) means, without starting anything:
  - the world size and dp × pp × sp × tp,
  - every process group (tp, sp, dp, pp, and dp×sp: the ranks that hold the same weights) as
    lists of global ranks (rank = ((pp·DP + dp)·SP + sp)·TP + tp; first groups only for > 64
    ranks),
  - the batch: micro-batches accumulated per optimizer step on each rank,
  - an estimate of memory per rank in MiB: parameters, gradients, AdamW state (sharded over dp
    with parallel.zero_stage=1), activations, total,
  - whether `loom train` in this version can run the layout.
The config is validated as `loom train` does: a layout that does not divide the model or the
batch is an error (exit status 1).

  --set k=v   override one config field, e.g. --set parallel.tp=2 (repeatable, applied in order)
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
std::vector<std::vector<int>> groups_of(const Mesh& mesh, const std::string& kind) {
  std::set<std::vector<int>> groups;
  for (int rank = 0; rank < mesh.world_size(); ++rank) {
    std::vector<int> group;
    if (kind == "dp×sp") {
      for (int d : mesh_group(mesh, rank, Axis::kData))
        for (int s : mesh_group(mesh, d, Axis::kSequence)) group.push_back(s);
      std::sort(group.begin(), group.end());
    } else {
      const Axis axis = kind == "tp"   ? Axis::kTensor
                        : kind == "sp" ? Axis::kSequence
                        : kind == "dp" ? Axis::kData
                                       : Axis::kPipeline;
      group = mesh_group(mesh, rank, axis);
    }
    groups.insert(group);
  }
  return {groups.begin(), groups.end()};
}

void print_groups(const Mesh& mesh) {
  std::printf("\nprocess groups (global ranks)\n");
  for (const char* kind : {"tp", "sp", "dp", "pp", "dp×sp"}) {
    const std::vector<std::vector<int>> groups = groups_of(mesh, kind);
    const size_t shown = mesh.world_size() > kMaxListedRanks
                             ? std::min<size_t>(groups.size(), kListedGroups)
                             : groups.size();
    const std::string what = std::to_string(groups.size()) + " group" +
                             (groups.size() == 1 ? "" : "s") + " of " +
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
    if (shown < groups.size()) line += " … (" + std::to_string(groups.size() - shown) + " more)";
    std::printf("%s\n", line.c_str());
  }
}

// The name prefix of unique layer u ("prelude.0.", "block.1.", "coda.0.").
std::string layer_prefix(const config::ModelConfig& m, int u) {
  if (u < m.prelude_layers()) return "prelude." + std::to_string(u) + ".";
  u -= m.prelude_layers();
  if (u < m.block_layers()) return "block." + std::to_string(u) + ".";
  return "coda." + std::to_string(u - m.block_layers()) + ".";
}

struct StagePlan {
  int first = 0, last = 0;  // unrolled positions [first, last]
  size_t floats = 0;        // parameters one rank of this stage holds
};

// Parameters per rank of each pipeline stage. A stage owns a contiguous slice of the unrolled
// layer list and holds every unique layer it runs (a shared block used by several stages is
// replicated on each); stage 0 holds the embeddings, the last stage the final norm and the LM
// head (with tied embeddings, a copy of the token embedding when pp > 1, as Megatron does).
std::vector<StagePlan> plan_stages(const Model& model, int pp) {
  const config::ModelConfig& m = model.config;
  std::vector<size_t> layer_floats(model.unique_layers, 0);
  size_t embedding = 0, head = 0, wte = 0;
  for (const ParamTensor& t : model.tensors) {
    const size_t share = t.size;  // this tensor-parallel rank's shard
    if (t.name == "wte") wte = share;
    if (t.name == "wte" || t.name == "wpe") {
      embedding += share;
    } else if (t.name.rfind("norm_f.", 0) == 0 || t.name == "lm_head.weight") {
      head += share;
    } else {
      bool found = false;
      for (int u = 0; u < model.unique_layers && !found; ++u)
        if (t.name.rfind(layer_prefix(m, u), 0) == 0) {
          layer_floats[u] += share;
          found = true;
        }
      LOOM_CHECK(found);
    }
  }
  const int positions = static_cast<int>(model.unrolled.size());
  const int per_stage = positions / pp;
  std::vector<StagePlan> stages(pp);
  for (int s = 0; s < pp; ++s) {
    StagePlan& stage = stages[s];
    stage.first = s * per_stage;
    stage.last = stage.first + per_stage - 1;
    std::set<int> unique(model.unrolled.begin() + stage.first,
                         model.unrolled.begin() + stage.last + 1);
    for (int u : unique) stage.floats += layer_floats[u];
    if (s == 0) stage.floats += embedding;
    if (s == pp - 1) stage.floats += head + (m.tie_embeddings() && pp > 1 ? wte : 0);
  }
  return stages;
}

std::string mib(double bytes) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%8.1f", bytes / kMiB);
  return buffer;
}

void print_memory(const config::RunConfig& cfg, const Mesh& mesh, int threads) {
  // Tensor-parallel rank 0's shards (the vocabulary padding makes it the largest).
  const Model model = model_layout(cfg.model(), nullptr, TensorParallel{mesh.tp, 0, nullptr});
  const std::vector<StagePlan> stages = plan_stages(model, mesh.pp);
  size_t largest = 0;
  for (size_t s = 1; s < stages.size(); ++s)
    if (stages[s].floats > stages[largest].floats) largest = s;
  const double params = 4.0 * static_cast<double>(stages[largest].floats);
  const bool zero = cfg.parallel().zero_stage() == 1;
  const double optimizer = 2.0 * params / (zero ? mesh.dp : 1);
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  const double arena = 4.0 * static_cast<double>(model_arena_floats(model, B, T));
  // The arena is this tensor-parallel rank's. Sequence parallelism cuts every (B, T, ·)
  // activation; a pipeline stage keeps its own layers' activations for up to min(pp,
  // micro-batches) micro-batches in flight (1F1B).
  const int in_flight = std::min(mesh.pp, grad_accum_steps(cfg));
  const double activations = arena / mesh.sp / mesh.pp * in_flight;
  const bool exact = mesh.pp == 1 && mesh.sp == 1;

  std::printf("\nmemory per rank (fp32, MiB%s)\n", exact ? "" : ", estimate");
  std::printf("  parameters       %s   %zu floats\n", mib(params).c_str(), stages[largest].floats);
  std::printf("  gradients        %s   as many as the parameters\n", mib(params).c_str());
  std::printf("  optimizer state  %s   AdamW m and v%s\n", mib(optimizer).c_str(),
              zero ? (", sharded over dp " + std::to_string(mesh.dp) + " (ZeRO-1)").c_str()
                   : ", not sharded (parallel.zero_stage=0)");
  std::printf("  activations      %s   micro_batch %d × seq_len %d at %d thread%s\n",
              mib(activations).c_str(), B, T, threads, threads == 1 ? "" : "s");
  std::printf("  total            %s\n", mib(2 * params + optimizer + activations).c_str());
  if (mesh.tp > 1)
    std::printf(
        "  tp %d: QKV, MLP and output matrices and the vocabulary split; norms and\n"
        "        row-parallel biases replicated\n",
        mesh.tp);
  if (!exact)
    std::printf("  activations: the tensor-parallel rank's arena (%.1f MiB) ÷ sp %d%s\n",
                arena / kMiB, mesh.sp,
                mesh.pp > 1 ? (", × " + std::to_string(in_flight) + "/" + std::to_string(mesh.pp) +
                               " (1F1B: micro-batches in flight / stages)")
                                  .c_str()
                            : "");
  if (mesh.pp > 1) {
    std::printf("  pp %d: parameters per rank of each stage (the largest is counted above)\n",
                mesh.pp);
    for (size_t s = 0; s < stages.size(); ++s)
      std::printf("    stage %-3zu unrolled layers %d–%d %s MiB\n", s, stages[s].first,
                  stages[s].last, mib(4.0 * stages[s].floats).c_str());
  }
}

}  // namespace

int command_plan(int argc, char** argv) {
  const Args args = parse_args("plan", argv, argc, {{"--set", true}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one CONFIG file (see loom plan --help)");
  const std::string config_path = args.positional[0];
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  const auto& p = cfg.parallel();
  const Mesh mesh{.dp = p.dp(), .pp = p.pp(), .sp = p.sp(), .tp = p.tp()};
  const config::ModelConfig& m = cfg.model();
  const config::TrainConfig& t = cfg.train();
  const int unrolled = m.prelude_layers() + m.block_layers() * m.loops() + m.coda_layers();
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
      model.num_params, unrolled, m.prelude_layers(), m.block_layers(), m.loops(), m.coda_layers());
  std::printf(
      "  batch       global_batch %d = micro_batch %d × dp %d × %d accumulation step%s "
      "per rank; seq_len %d",
      t.global_batch(), t.micro_batch(), mesh.dp, grad_accum_steps(cfg),
      grad_accum_steps(cfg) == 1 ? "" : "s", t.seq_len());
  if (mesh.sp > 1) std::printf(" (%d tokens per sp rank)", t.seq_len() / mesh.sp);
  std::printf("\n");
  print_groups(mesh);
  print_memory(cfg, mesh, threads);

  std::printf("\n");
  try {
    validate_trainable(cfg);
    std::printf("loom train: can run this layout (%d rank%s)\n", mesh.world_size(),
                mesh.world_size() == 1 ? "" : "s");
  } catch (const Error& e) {
    std::printf("loom train: cannot run this layout in this version: %s\n", e.what());
  }
  return 0;
}

}  // namespace loom
