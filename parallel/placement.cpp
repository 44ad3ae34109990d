#include "parallel/placement.h"

#include <map>
#include <set>

#include "base/error.h"

namespace loom {

Placement placement_fill(const std::vector<NodeSlots>& nodes, int world) {
  Placement p;
  long total = 0;
  for (const NodeSlots& n : nodes) {
    LOOM_CHECK(n.slots > 0);
    total += n.slots;
    if (static_cast<int>(p.node_of_rank.size()) >= world) continue;
    p.nodes.push_back(n.node);
    for (int s = 0; s < n.slots && static_cast<int>(p.node_of_rank.size()) < world; ++s)
      p.node_of_rank.push_back(static_cast<int>(p.nodes.size()) - 1);
  }
  if (total < world)
    throw Error("the layout needs " + std::to_string(world) + " ranks but the hosts offer " +
                std::to_string(total) + " slots (" + std::to_string(nodes.size()) + " node" +
                (nodes.size() == 1 ? "" : "s") + "); add slots or nodes, or lower parallel.dp");
  return p;
}

Placement placement_of_hosts(const std::vector<std::string>& host_of_rank) {
  Placement p;
  std::map<std::string, int> index;
  for (const std::string& host : host_of_rank) {
    auto [it, added] = index.emplace(host, static_cast<int>(p.nodes.size()));
    if (added) p.nodes.push_back(host);
    p.node_of_rank.push_back(it->second);
  }
  return p;
}

std::vector<std::vector<int>> groups_across_nodes(const Mesh& mesh, const Placement& placement,
                                                  Axis axis) {
  LOOM_CHECK(static_cast<int>(placement.node_of_rank.size()) == mesh.world_size());
  std::set<std::vector<int>> crossing;
  for (int rank = 0; rank < mesh.world_size(); ++rank) {
    // Each group once, from its member at coordinate 0: linear in the ranks however large the
    // groups are.
    const MeshCoord c = mesh_coord(mesh, rank);
    const int along = axis == Axis::kData       ? c.dp
                      : axis == Axis::kPipeline ? c.pp
                      : axis == Axis::kSequence ? c.sp
                                                : c.tp;
    if (along != 0) continue;
    const std::vector<int> group = mesh_group(mesh, rank, axis);
    for (int member : group)
      if (placement.node_of_rank[member] != placement.node_of_rank[group.front()]) {
        crossing.insert(group);
        break;
      }
  }
  return {crossing.begin(), crossing.end()};
}

std::string group_nodes(const Placement& placement, const std::vector<int>& ranks) {
  std::string out;
  std::set<int> seen;
  for (int r : ranks) {
    const int node = placement.node_of_rank.at(r);
    if (!seen.insert(node).second) continue;
    out += (out.empty() ? "" : ", ") + placement.nodes[node];
  }
  return out;
}

std::string cross_node_tp_problem(const Mesh& mesh, const Placement& placement) {
  const std::vector<std::vector<int>> crossing =
      groups_across_nodes(mesh, placement, Axis::kTensor);
  if (crossing.empty()) return "";
  const std::vector<int>& group = crossing.front();
  std::string ranks;
  for (int r : group) {
    if (!ranks.empty()) ranks += ',';
    ranks += std::to_string(r);
  }
  return "tensor-parallel group {" + ranks + "} would span nodes " + group_nodes(placement, group) +
         (crossing.size() > 1 ? " (and " + std::to_string(crossing.size() - 1) + " more tp group" +
                                    (crossing.size() > 2 ? "s" : "") + ")"
                              : "") +
         "; tp all-reduces every layer's activations and belongs inside a node. Give each node a "
         "multiple of parallel.tp = " +
         std::to_string(mesh.tp) +
         " ranks (ranks fill nodes in rank order, tp fastest), or pass --allow-cross-node-tp";
}

}  // namespace loom
