// One rank's place in the 4-D mesh and a communicator for each of its groups.
//
// Groups (rank order as in mesh.h): tp, sp, dp, pp — the ranks that differ only in that
// coordinate — and dp_sp, the ranks that hold the same weights (same tp and pp coordinates),
// over which data-parallel gradients are reduced. A single-process run gets groups of one.
//
//   loom::ProcessGroups g = loom::process_groups_create(mpi.get(), mesh);   // mpi may be null
//   g.dp->all_reduce(grads, n, loom::ReduceOp::kAvg);
//   std::cerr << g.label() << " ...";             // "[rank 3 dp=1 pp=0 sp=0 tp=1]"
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mesh.h"
#include "parallel/mpi_runtime.h"
#include "parallel/placement.h"

namespace loom {

struct ProcessGroups {
  Mesh mesh;
  int rank = 0;  // global
  MeshCoord coord;
  int local_ranks = 1;  // ranks of the job on this node
  // The node (host name) of every rank, as the ranks reported it at start-up.
  Placement placement;
  std::unique_ptr<Communicator> world, dp, pp, sp, tp, dp_sp;
  // parallel.tp_sequence_parallel: a second communicator over the tp group for the all-gathers,
  // so that one does not queue behind a reduce-scatter still in flight on tp (null otherwise).
  std::unique_ptr<Communicator> tp_gather;
  MpiRuntime* mpi = nullptr;  // null in a single-process run

  bool is_distributed() const { return mesh.world_size() > 1; }
  const std::string& node() const { return placement.nodes[placement.node_of_rank[rank]]; }
  // This rank's index among the job's ranks on its node, in global rank order (which GPU it uses).
  int local_rank() const;
  // "[rank R dp=.. pp=.. sp=.. tp=..]", the prefix of this rank's log lines; a job on several
  // nodes adds " node=NAME".
  std::string label() const;
};

// With mpi null: the single-process groups (mesh must have world size 1). With MPI: checks that
// the job's world size equals mesh.world_size() (throws loom::Error saying which to change) and
// creates every group, after gathering every rank's host name; collective over the world.
ProcessGroups process_groups_create(MpiRuntime* mpi, const Mesh& mesh);

// The ranks that share this rank's dp, sp and tp coordinates and whose pipeline coordinate is in
// `pp_members` (ascending), ordered by it: the holders of one replicated tensor. Null on a rank
// outside it. Collective over the world: every rank calls it with the same members, in the same
// order as the other splits.
// Creates groups.tp_gather (collective over the world; with tp > 1 only).
void process_groups_add_tp_gather(ProcessGroups& groups);

std::unique_ptr<Communicator> process_groups_pipeline_subset(ProcessGroups& groups,
                                                              const std::vector<int>& pp_members,
                                                              const std::string& name);

}  // namespace loom
