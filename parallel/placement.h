// Which node each rank runs on, and which process groups that puts across nodes.
//
// Ranks fill nodes in rank order (mpirun --map-by slot, srun's block distribution), and the mesh
// puts tp fastest (mesh.h), so a tp group stays inside a node whenever the ranks per node are a
// multiple of tp. Tensor parallelism all-reduces every layer's activations: across a network link
// it is many times slower than through shared memory, so loom refuses such a placement unless
// told otherwise (docs/architecture.md, "Multi-node"). sp, dp and pp groups may cross nodes.
//
//   loom::Placement p = loom::placement_fill({{"a", 4}, {"b", 4}}, 8);  // ranks 0-3 on a, 4-7 on b
//   std::string why = loom::cross_node_tp_problem(mesh, p);             // "" when none crosses
#pragma once
#include <string>
#include <vector>

#include "parallel/mesh.h"

namespace loom {

struct Placement {
  std::vector<std::string> nodes;  // in the order of their first rank
  std::vector<int> node_of_rank;   // index into nodes, one per rank
};

struct NodeSlots {
  std::string node;
  int slots = 0;
  bool operator==(const NodeSlots&) const = default;
};

// Ranks 0..world-1 filling each node's slots before the next node's. Throws loom::Error when
// the slots add up to fewer than world (naming both numbers).
Placement placement_fill(const std::vector<NodeSlots>& nodes, int world);

// The placement of ranks whose hosts are `host_of_rank` (what every rank reports at start-up).
Placement placement_of_hosts(const std::vector<std::string>& host_of_rank);

// Groups along `axis` whose ranks are on more than one node, each as its ranks.
std::vector<std::vector<int>> groups_across_nodes(const Mesh& mesh, const Placement& placement,
                                                  Axis axis);

// The nodes (names, comma-separated) that a group's ranks are on.
std::string group_nodes(const Placement& placement, const std::vector<int>& ranks);

// "" when every tp group is inside one node; else an error naming the first crossing group, its
// nodes, how many groups cross, and the ways out (ranks per node a multiple of tp, or
// --allow-cross-node-tp).
std::string cross_node_tp_problem(const Mesh& mesh, const Placement& placement);

}  // namespace loom
