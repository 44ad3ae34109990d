// The sections of `loom plan`'s report (launcher/command_plan.cpp): the process groups, the
// placement over nodes, memory per rank (core/memory_model.h) with the recompute policies and the
// pipeline's stage table, and the longest sequence within a budget. Every line stays within about
// 120 columns whatever the world size or stage count: a world of more than 64 ranks shows each
// kind of group as one table row, many nodes as the first few and the last, and the stages as a
// table of one row per stage.
//
//   loom::plan_print_groups(layout.mesh);
//   loom::plan_print_memory(cfg, layout, loom::layout_memory(cfg, layout), threads);
#pragma once
#include <string>

#include "core/layout_search.h"
#include "core/memory_model.h"
#include "core/parallel_layout.h"
#include "core/time_model.h"
#include "loom.pb.h"
#include "parallel/mesh.h"
#include "parallel/placement.h"

namespace loom {

// Every process group (tp, sp, dp, pp, dp×sp) as global ranks; of a world over 64 ranks, one row
// per kind: how many groups of what size, the first two groups and the last.
void plan_print_groups(const Mesh& mesh);

// The node each rank lands on and the groups that span nodes; returns the most ranks on one node.
int plan_print_placement(const Mesh& mesh, const Placement& placement);

// Memory per rank (the largest stage's), its activations under each train.recompute policy and,
// with pp > 1, the schedule and one table row per stage.
void plan_print_memory(const config::RunConfig& cfg, const ParallelLayout& layout,
                       const LayoutMemory& memory, int threads);

// "loom plan: HEADLINE DETAIL" on one line when it is short, else DETAIL below the headline, cut at
// spaces into indented lines of at most 100 columns.
void plan_print_verdict(const std::string& headline, const std::string& detail);

// The longest train.seq_len the layout trains within `budget_gib` GiB per rank.
void plan_print_longest_sequence(const config::RunConfig& cfg, double budget_gib);
// The predicted step on `nodes` nodes of `cluster` (core/time_model.h), part by part.
// `loom plan --search`: the fastest layouts that fit, each with what it loses against the best;
// the best as --set assignments; the fastest shapes that do not fit, with their memory.
void plan_print_search(const LayoutSearch& search, const ClusterConfig& cluster, int nodes,
                       double budget_gib, int top);

void plan_print_step_time(const StepPrediction& p, const ClusterConfig& cluster, int nodes,
                          const Mesh& mesh);

}  // namespace loom
