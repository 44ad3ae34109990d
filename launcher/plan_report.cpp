#include "launcher/plan_report.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/config.h"
#include "core/loop_sampling.h"
#include "core/stage_plan.h"
#include "launcher/hosts.h"
#include "parallel/ring_attention.h"

namespace loom {
namespace {

constexpr int kMaxListedRanks = 64;   // larger worlds: one table row per kind of group
constexpr size_t kListedGroups = 4;   // groups across nodes named per kind in a small world
constexpr size_t kListedNodes = 4;    // nodes named for one group
constexpr size_t kLineColumns = 120;  // the stage table wraps its descriptions at this width
constexpr double kMiB = 1024.0 * 1024.0;

// Columns `s` takes on a terminal (UTF-8: "×" is one column, two bytes).
size_t columns(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// `s` padded with spaces to `width` columns.
std::string pad(std::string s, size_t width) {
  const size_t n = columns(s);
  if (n < width) s.append(width - n, ' ');
  return s;
}

// `s` right-aligned in `width` columns.
std::string right(const std::string& s, size_t width) {
  const size_t n = columns(s);
  return n < width ? std::string(width - n, ' ') + s : s;
}

std::string mib(double bytes, const char* format = "%8.2f") {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), format, bytes / kMiB);
  return buffer;
}

// A small world's group in full, or (over 16 ranks) its first members, its last and its size.
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
  if (ranks.size() > 16) s += " (" + std::to_string(ranks.size()) + " ranks)";
  return s;
}

// A large world's group in a table cell: up to 4 members in full, else the first two (the
// stride) and the last.
std::string format_group_short(const std::vector<int>& ranks) {
  if (ranks.size() <= 4) return format_group(ranks);
  std::string s = "{";
  s += std::to_string(ranks[0]);
  s += ',';
  s += std::to_string(ranks[1]);
  s += ",…,";
  s += std::to_string(ranks.back());
  return s + "}";
}

Axis axis_of(const std::string& kind) {
  return kind == "tp"   ? Axis::kTensor
         : kind == "sp" ? Axis::kSequence
         : kind == "dp" ? Axis::kData
                        : Axis::kPipeline;
}

// The group of `kind` (dp×sp: the ranks that hold the same weights) holding `rank`, ascending.
std::vector<int> group_of(const Mesh& mesh, const std::string& kind, int rank) {
  if (kind != "dp×sp") return mesh_group(mesh, rank, axis_of(kind));
  std::vector<int> group;
  for (int d : mesh_group(mesh, rank, Axis::kData))
    for (int s : mesh_group(mesh, d, Axis::kSequence)) group.push_back(s);
  std::sort(group.begin(), group.end());
  return group;
}

// The first `limit` groups of one kind (ordered by their lowest rank) and how many there are, in
// time linear in the ranks: a group is found from its lowest rank, the one whose coordinates
// along the group's axes are 0.
std::vector<std::vector<int>> groups_of(const Mesh& mesh, const std::string& kind, size_t limit,
                                        size_t* count) {
  const int size = kind == "dp×sp" ? mesh.dp * mesh.sp
                   : kind == "tp"  ? mesh.tp
                   : kind == "sp"  ? mesh.sp
                   : kind == "dp"  ? mesh.dp
                                   : mesh.pp;
  *count = static_cast<size_t>(mesh.world_size() / size);
  std::vector<std::vector<int>> groups;
  for (int rank = 0; rank < mesh.world_size() && groups.size() < limit; ++rank) {
    const MeshCoord c = mesh_coord(mesh, rank);
    const bool lowest = kind == "dp×sp" ? c.dp == 0 && c.sp == 0
                        : kind == "tp"  ? c.tp == 0
                        : kind == "sp"  ? c.sp == 0
                        : kind == "dp"  ? c.dp == 0
                                        : c.pp == 0;
    if (lowest) groups.push_back(group_of(mesh, kind, rank));
  }
  return groups;
}

std::string groups_count(size_t count, size_t size) {
  return std::to_string(count) + " group" + (count == 1 ? "" : "s") + " of " + std::to_string(size);
}

// Every group of one kind, wrapped at 100 columns (a world of at most kMaxListedRanks).
void print_group_list(const Mesh& mesh, const std::string& kind) {
  size_t count = 0;
  const std::vector<std::vector<int>> groups = groups_of(mesh, kind, SIZE_MAX, &count);
  const std::string indent(28, ' ');
  std::string line =
      pad(pad("  " + kind, 9) + groups_count(count, groups[0].size()) + "  ", indent.size());
  bool line_empty = true;  // no group on `line` yet
  for (const std::vector<int>& group : groups) {
    const std::string g = format_group(group);
    if (!line_empty && line.size() + 1 + g.size() > 100) {
      std::printf("%s\n", line.c_str());
      line = indent;
      line_empty = true;
    }
    if (!line_empty) line += ' ';
    line += g;
    line_empty = false;
  }
  std::printf("%s\n", line.c_str());
}

// One table row of a kind of group: how many of what size, the first two and the last.
void print_group_row(const Mesh& mesh, const std::string& kind) {
  size_t count = 0;
  const std::vector<std::vector<int>> first = groups_of(mesh, kind, 2, &count);
  std::string line = pad(pad("  " + kind, 9) + groups_count(count, first[0].size()) + "  ", 28);
  line += format_group_short(first[0]);
  if (count >= 3) {
    line += ' ';
    line += format_group_short(first[1]);
    if (count > 3) line += " …";
  }
  if (count >= 2) {
    line += ' ';
    line += format_group_short(group_of(mesh, kind, mesh.world_size() - 1));
  }
  std::printf("%s\n", line.c_str());
}

// The distinct nodes a group's ranks are on: up to kListedNodes by name, else the first, the
// last and how many.
std::string nodes_text(const Placement& placement, const std::vector<int>& ranks) {
  std::vector<int> nodes;
  std::set<int> seen;
  for (int r : ranks)
    if (seen.insert(placement.node_of_rank.at(r)).second)
      nodes.push_back(placement.node_of_rank[r]);
  std::string out;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes.size() > kListedNodes && i == kListedNodes - 2) {
      out += ", …";
      i = nodes.size() - 1;
    }
    out += (i == 0 ? "" : ", ") + placement.nodes[static_cast<size_t>(nodes[i])];
  }
  if (nodes.size() > kListedNodes) out += " (" + std::to_string(nodes.size()) + " nodes)";
  return out;
}

// "8 ranks on 512 nodes" or "8 ranks on 511 nodes, 4 on 1".
std::string ranks_per_node(const std::vector<int>& per_node) {
  std::vector<std::pair<int, int>> tally;  // (ranks, nodes), most ranks first
  for (int n : per_node) {
    auto it = std::find_if(tally.begin(), tally.end(), [&](const auto& t) { return t.first == n; });
    if (it == tally.end())
      tally.push_back({n, 1});
    else
      ++it->second;
  }
  std::sort(tally.begin(), tally.end(), [](const auto& a, const auto& b) { return a > b; });
  std::string out;
  for (const auto& [ranks, nodes] : tally)
    out += (out.empty() ? std::to_string(ranks) + " rank" + (ranks == 1 ? "" : "s")
                        : ", " + std::to_string(ranks)) +
           " on " + std::to_string(nodes) + " node" + (nodes == 1 ? "" : "s");
  return out;
}

// `text` cut at ", " into lines of at most `width` columns (a part longer than that alone).
std::vector<std::string> wrap(const std::string& text, size_t width) {
  std::vector<std::string> lines{""};
  size_t at = 0;
  while (at < text.size()) {
    size_t comma = text.find(", ", at);
    const std::string part = text.substr(at, comma == std::string::npos ? comma : comma + 1 - at);
    at = comma == std::string::npos ? text.size() : comma + 2;
    if (!lines.back().empty() && columns(lines.back()) + 1 + columns(part) > width)
      lines.push_back("");
    lines.back() += (lines.back().empty() ? "" : " ") + part;
  }
  return lines;
}

// The pipeline's schedule and bubble, then one row per stage: what its ranks hold (MiB), how
// many micro-batches' activations it keeps, and the unrolled layers of each of its chunks.
void print_pipeline(const config::RunConfig& cfg, const ParallelLayout& layout,
                    const LayoutMemory& memory) {
  const Mesh& mesh = layout.mesh;
  const StagePlan& plan = layout.stages;
  const PipelineKind kind = layout.pipeline;
  const int m = layout.micro_batches, v = plan.virtual_stages;
  std::printf(
      "\npipeline %s: %d stages × %d chunk%s, %d micro-batches per step; bubble %.1f%% "
      "(%s)\n",
      pipeline_kind_name(kind), mesh.pp, v, v == 1 ? "" : "s", m,
      100.0 * pipeline_bubble_fraction(kind, mesh.pp, m, v),
      kind == PipelineKind::kInterleaved1F1B ? "(p−1)/(v·m+p−1)"
      : kind == PipelineKind::kZeroBubbleH1  ? "simulated with F = B = W"
      : kind == PipelineKind::kZeroBubbleV   ? "simulated with F : B : W = 5 : 6 : 4"
                                             : "(p−1)/(m+p−1)");
  std::printf(
      "  MiB per rank; params: parameters; AdamW: its m and v; total: with gradients;\n"
      "  activations = slots (micro-batches in flight × MiB each) + buffers (boundary "
      "buffers,\n  shared temporaries); cost: of the chunk ÷ the largest chunk's\n");
  const std::string head = "  stage   params    AdamW  activations      slots  buffers    total  ";
  std::printf("%sunrolled layers (cost)\n", head.c_str());
  const std::vector<double> costs = stage_plan_costs(cfg, plan);
  const double most = *std::max_element(costs.begin(), costs.end());
  const size_t width = kLineColumns - columns(head);
  for (int r = 0; r < mesh.pp; ++r) {
    const StageMemory& s = memory.stages[static_cast<size_t>(r)];
    char slot[32];
    std::snprintf(slot, sizeof(slot), "%d × %.1f", s.slots, 4.0 * s.arena.slot / kMiB);
    const double buffers = 4.0 * (s.boundaries * s.arena.boundary + s.arena.shared);
    std::string line = right(std::to_string(r), 7) + mib(4.0 * s.params, "%9.1f") +
                       mib(4.0 * s.optimizer, "%9.1f") + mib(4.0 * s.arena.total, "%13.2f") +
                       right(slot, 11) + mib(buffers, "%9.1f") + mib(s.bytes(), "%9.1f") + "  ";
    for (int g : stage_plan_pieces(plan, r)) {
      char cost[32];
      std::snprintf(cost, sizeof(cost), " (%.2f)", costs[g] / most);
      std::string range =
          std::to_string(plan.bounds[g]) + "–" + std::to_string(plan.bounds[g + 1] - 1) + ": ";
      const std::string what =
          stage_plan_describe(cfg.model(), plan.bounds[g], plan.bounds[g + 1]) + cost;
      for (const std::string& part : wrap(what, width - columns(range))) {
        std::printf("%s%s%s\n", line.c_str(), range.c_str(), part.c_str());
        line = std::string(columns(head), ' ');
        range = std::string(columns(range), ' ');  // a chunk's further lines: under its words
      }
    }
  }
}

// The stage holding the most activations (the first of equals).
int most_activations(const LayoutMemory& memory) {
  int most = 0;
  for (size_t r = 0; r < memory.stages.size(); ++r)
    if (memory.stages[r].arena.total > memory.stages[static_cast<size_t>(most)].arena.total)
      most = static_cast<int>(r);
  return most;
}

// The largest stage's activations and total under each train.recompute policy the layout can
// run: the row of this run's policy is the summary's figures.
void print_recompute(const config::RunConfig& cfg, const Mesh& mesh) {
  const std::string title = "  by train.recompute";
  std::printf("%s  activations     total%s\n", title.c_str(),
              mesh.pp > 1 ? "  (the largest stage)" : "");
  for (auto policy :
       {config::TrainConfig::NONE, config::TrainConfig::LOOP_BOUNDARY, config::TrainConfig::SQRT}) {
    config::RunConfig with = cfg;
    with.mutable_train()->set_recompute(policy);
    try {
      validate_config(with);
    } catch (const Error&) {
      continue;  // a policy this layout cannot run
    }
    const LayoutMemory memory = layout_memory(with, parallel_layout(with));
    std::string line = "    " + pad(config::TrainConfig::Recompute_Name(policy), 14) +
                       std::string(columns(title) + 2 - 18, ' ') +
                       mib(4.0 * memory.peak().arena.total, "%11.2f") +
                       mib(memory.bytes(), "%10.2f");
    if (mesh.pp > 1) line += "  stage " + std::to_string(memory.largest);
    if (policy == cfg.train().recompute()) line += "  (this run)";
    std::printf("%s\n", line.c_str());
  }
  const LoopCounts loops = run_loop_counts(cfg);
  if (loops.min != loops.max)
    std::printf(
        "  planned for every loop count from %d to %d (model.loops_sampling, "
        "train.eval_loops)\n",
        loops.min, loops.max);
}

}  // namespace

void plan_print_groups(const Mesh& mesh) {
  const bool large = mesh.world_size() > kMaxListedRanks;
  std::printf("\nprocess groups (global ranks%s)\n",
              large ? "; of each kind the first two groups and the last" : "");
  for (const char* kind : {"tp", "sp", "dp", "pp", "dp×sp"}) {
    if (large)
      print_group_row(mesh, kind);
    else
      print_group_list(mesh, kind);
  }
}

int plan_print_placement(const Mesh& mesh, const Placement& placement) {
  std::printf("\nplacement (ranks fill one node's slots, then the next)\n");
  std::vector<int> per_node(placement.nodes.size(), 0);
  for (int node : placement.node_of_rank) ++per_node[static_cast<size_t>(node)];
  std::printf("  %s\n", placement_summary(placement).c_str());
  if (placement.nodes.size() > kListedNodes)
    std::printf("  %s\n", ranks_per_node(per_node).c_str());
  std::printf("  groups across nodes:\n");
  const bool large = mesh.world_size() > kMaxListedRanks;
  const size_t listed = large ? 1 : kListedGroups;
  for (const auto& [name, axis] : {std::pair{"tp", Axis::kTensor},
                                   {"sp", Axis::kSequence},
                                   {"dp", Axis::kData},
                                   {"pp", Axis::kPipeline}}) {
    const std::vector<std::vector<int>> crossing = groups_across_nodes(mesh, placement, axis);
    const size_t groups = static_cast<size_t>(mesh.world_size()) / mesh_group(mesh, 0, axis).size();
    std::string line = crossing.empty()
                           ? "none"
                           : std::to_string(crossing.size()) + " of " + std::to_string(groups);
    for (size_t i = 0; i < crossing.size() && i < listed; ++i)
      line += (i == 0 ? (large ? ", e.g. " : ": ") : "; ") +
              (large ? format_group_short(crossing[i]) : format_group(crossing[i])) + " on " +
              nodes_text(placement, crossing[i]);
    if (crossing.size() > listed && !large) line += "; …";
    std::printf("    %s  %s\n", name, line.c_str());
  }
  return *std::max_element(per_node.begin(), per_node.end());
}

void plan_print_memory(const config::RunConfig& cfg, const ParallelLayout& layout,
                       const LayoutMemory& memory, int threads) {
  const Mesh& mesh = layout.mesh;
  const StageMemory& big = memory.peak();
  const bool zero = layout.zero, bf16 = layout.bf16;
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  std::printf(
      "\nmemory per rank (%s, MiB)\n",
      bf16 ? "BF16: fp32 master weights, gradients and AdamW state; bf16 activations" : "FP32");
  std::printf(
      "  parameters       %s   %zu floats%s\n", mib(4.0 * big.params).c_str(), big.params,
      mesh.pp > 1 ? (" (stage " + std::to_string(memory.largest) + ", the largest)").c_str() : "");
  std::printf("  gradients        %s   %s\n", mib(4.0 * big.grads).c_str(),
              layout.zero_grads
                  ? "ZeRO-2 windows: the shared block, embedding and head whole; the other layers "
                    "in slots reduced every micro-batch"
                  : "as many as the parameters");
  const std::string stage = cfg.parallel().zero_stage() == 2 ? "ZeRO-2" : "ZeRO-1";
  std::printf(
      "  optimizer state  %s   AdamW m and v%s\n", mib(4.0 * big.optimizer).c_str(),
      zero ? (", sharded over dp " + std::to_string(mesh.dp * mesh.sp) + " (" + stage + ")").c_str()
           : ", not sharded (parallel.zero_stage=0)");
  std::printf(
      "  activations      %s   micro_batch %d × seq_len %d%s at %d thread%s; %d "
      "micro-batch%s in flight\n",
      mib(4.0 * big.arena.total).c_str(), B, T,
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
                : layout.zero_grads ? "ZeRO-2 gradient shard and the slots' reduce-scatter results"
                                    : "ZeRO-1 gradient shard");
  std::printf("  total            %s\n", mib(big.bytes()).c_str());
  // The largest stage by total need not keep the most activations (the first stage's embedding
  // can outweigh a later stage's extra micro-batches in flight): say which one does.
  const int most = most_activations(memory);
  if (most != memory.largest) {
    const StageMemory& s = memory.stages[static_cast<size_t>(most)];
    std::printf("  (stage %d keeps the most activations: %s MiB, %s MiB in all)\n", most,
                mib(4.0 * s.arena.total, "%.2f").c_str(), mib(s.bytes(), "%.2f").c_str());
  }
  print_recompute(cfg, mesh);
  if (mesh.tp > 1 && layout.tp_sequence) {
    // The same memory model without it, for the difference it makes.
    ParallelLayout plain = layout;
    plain.tp_sequence = false;
    const StageMemory& without = layout_memory(cfg, plain).peak();
    std::printf(
        "  tp %d: QKV, MLP and output matrices and the vocabulary split; norms and\n"
        "        row-parallel biases replicated; sequence parallel: the stream, norms and\n"
        "        pipeline boundaries hold %d of a micro-batch's %d tokens: activations\n"
        "        %s MiB, %s MiB without it\n",
        mesh.tp, B * (T / mesh.sp) / mesh.tp, B * (T / mesh.sp),
        mib(4.0 * big.arena.total, "%.2f").c_str(), mib(4.0 * without.arena.total, "%.2f").c_str());
  } else if (mesh.tp > 1)
    std::printf(
        "  tp %d: QKV, MLP and output matrices and the vocabulary split; norms and\n"
        "        row-parallel biases replicated\n",
        mesh.tp);
  if (mesh.sp > 1) {
    const int Cl = cfg.model().d_model() / mesh.tp, Tl = T / mesh.sp,
              Ckvl = model_kv_heads(cfg.model()) * (cfg.model().d_model() / cfg.model().n_heads()) /
                     mesh.tp;
    const bool ulysses = layout.sequence_method == SequenceMethod::kUlysses;
    std::printf(
        "  sp %d: activations of the rank's rows; %s (%.2f MiB of the shared temporaries)\n",
        mesh.sp,
        ulysses ? "Ulysses' all-to-all blocks and a head group's\n"
                  "        whole-sequence output and gradients"
                : "ring attention's key/value blocks and\n        gradients in flight",
        (bf16 ? 2.0 : 4.0) *
            (ulysses ? ulysses_workspace_activations(B, Tl, Cl, Ckvl)
                     : ring_workspace_activations(B, Tl, Cl, Ckvl)) /
            kMiB);
  }
  if (mesh.pp > 1) print_pipeline(cfg, layout, memory);
}

namespace {

// Bytes per rank of the layout (its largest stage).
double rank_bytes(const config::RunConfig& cfg) {
  return layout_memory(cfg, parallel_layout(cfg)).bytes();
}

// The config at sequence length T (learned position tables grown to T when shorter).
config::RunConfig at_seq_len(config::RunConfig cfg, long T) {
  cfg.mutable_train()->set_seq_len(static_cast<int>(T));
  if (cfg.model().max_seq_len() < T) cfg.mutable_model()->set_max_seq_len(static_cast<int>(T));
  return cfg;
}

}  // namespace

// The longest train.seq_len (a multiple of what the sequence layout needs) that the config's
// validation accepts (model.max_seq_len raised to it) and whose memory per rank is within the
// budget, by bisection (memory grows with T); none if even the shortest does not fit.
void plan_print_longest_sequence(const config::RunConfig& cfg, double budget_gib) {
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

// "loom plan: HEADLINE DETAIL" on one line when it is short, else DETAIL below the headline,
// cut at spaces into indented lines of at most 100 columns.
void plan_print_verdict(const std::string& headline, const std::string& detail) {
  constexpr size_t kWidth = 100;
  const std::string first = "loom plan: " + headline;
  if (columns(first) + 1 + columns(detail) <= kWidth) {
    std::printf("\n%s %s\n", first.c_str(), detail.c_str());
    return;
  }
  std::printf("\n%s\n", first.c_str());
  std::string line = "  ";
  size_t at = 0;
  while (at < detail.size()) {
    const size_t space = std::min(detail.find(' ', at), detail.size());
    const std::string word = detail.substr(at, space - at);
    at = space + 1;
    if (line.size() > 2 && columns(line) + 1 + columns(word) > kWidth) {
      std::printf("%s\n", line.c_str());
      line = "  ";
    }
    line += (line.size() > 2 ? " " : "") + word;
  }
  std::printf("%s\n", line.c_str());
}

void plan_print_search(const LayoutSearch& search, const ClusterConfig& cluster, int nodes,
                       double budget_gib, int top) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const std::string budget = memory_size_text(budget_gib * kGiB);
  std::printf(
      "layout search on %d node%s of %s (%d devices, %s per device): %d shapes (dp, tp, pp, sp, "
      "micro-batch, schedule), %d layouts judged with each recompute policy and ZeRO stage, %d "
      "refused by the config's rules; step times from the model of core/time_model.h\n",
      nodes, nodes == 1 ? "" : "s", cluster.name().c_str(), nodes * cluster.devices_per_node(),
      budget.c_str(), search.shapes, search.layouts, search.invalid);
  if (search.fitting.empty()) {
    std::printf("\nno layout fits %s per device\n", budget.c_str());
  } else {
    const LayoutCandidate& best = search.fitting.front();
    std::printf("\nthe fastest that fit, the best of each mesh and schedule:\n");
    std::printf("  #  %-72s %9s %6s %8s  %s\n", "layout", "step ms", "MFU", "GiB/rank",
                "critical; against #1");
    // The best of each mesh and schedule: another micro-batch of one shows little.
    std::set<std::tuple<int, int, int, int, int, int>> seen;
    int i = 0;
    for (const LayoutCandidate& c : search.fitting) {
      if (i == top) break;
      if (!seen.insert({c.dp, c.tp, c.pp, c.sp, c.schedule, c.virtual_stages}).second) continue;
      const std::string against = i == 0 ? "" : "; " + layout_loses_by(c, best);
      std::printf("%3d  %-72s %9.1f %5.1f%% %8.1f  %s%s\n", ++i, c.describe().c_str(),
                  1e3 * c.prediction.step, 100.0 * c.prediction.mfu, c.bytes / kGiB,
                  c.prediction.critical.c_str(), against.c_str());
    }
    std::printf("\nthe best, as settings:");
    for (const std::string& o : best.overrides()) std::printf(" --set %s", o.c_str());
    std::printf("\n");
  }
  // Shapes faster than the best that fits, out of memory even at their smallest.
  const double bar = search.fitting.empty() ? 1e300 : search.fitting.front().prediction.step;
  int listed = 0;
  for (const LayoutCandidate& c : search.out_of_memory) {
    if (c.prediction.step >= bar || listed == top) break;
    if (listed++ == 0) std::printf("\nfaster, but out of memory even at their smallest:\n");
    std::printf("     %-72s %9.1f  needs %s > %s\n", c.describe().c_str(), 1e3 * c.prediction.step,
                memory_size_text(c.bytes).c_str(), budget.c_str());
  }
}

void plan_print_step_time(const StepPrediction& p, const ClusterConfig& cluster, int nodes,
                          const Mesh& mesh) {
  std::printf(
      "\nstep time on %d node%s of %s (%d of %d devices; the model of core/time_model.h, "
      "its figures from %s)\n",
      nodes, nodes == 1 ? "" : "s", cluster.name().c_str(), mesh.world_size(),
      nodes * cluster.devices_per_node(), cluster.source().c_str());
  const char* what[] = {"forward and backward kernels",
                        "train.recompute's forwards again",
                        "tensor-parallel collectives not hidden",
                        "sequence-parallel transfers not hidden",
                        "pipeline idle (the schedule simulated)",
                        "pipeline sends waited on",
                        "gradient reduction after backward",
                        "shared weights summed over stages",
                        "AdamW"};
  const auto parts = p.parts();
  for (size_t i = 0; i < parts.size(); ++i)
    std::printf("  %-10s %10.2f ms  %5.1f%%  %s\n", parts[i].first.c_str(), 1e3 * parts[i].second,
                100.0 * parts[i].second / p.step, what[i]);
  std::printf("  %-10s %10.2f ms           critical: %s\n", "step", 1e3 * p.step,
              p.critical.c_str());
  std::printf(
      "  hidden     tp %.2f ms, sp %.2f ms, dp %.2f ms (behind the next sub-layer, block "
      "attention, backward)\n",
      1e3 * p.hidden_tp, 1e3 * p.hidden_sp, 1e3 * p.hidden_dp);
  std::printf(
      "  %.0f tokens/s, MFU %.1f%% (model FLOPs as Megatron counts them: 3 × forward, attention "
      "over all keys, no recomputation)\n",
      p.tokens_per_s, 100.0 * p.mfu);
}

}  // namespace loom
