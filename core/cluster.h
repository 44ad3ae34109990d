// A cluster description (configs/loom.proto, ClusterConfig; cluster/*.textproto) and the cost of
// moving bytes over it: which link kind each process group's ring crosses, given how ranks are
// placed on nodes, and the α–β time of a collective on it (docs/architecture.md, "Step-time
// model").
//
//   loom::ClusterConfig c = loom::load_cluster("cluster/dgx_a100.textproto");
//   loom::LinkCost tp = loom::group_link(c, mesh, loom::Axis::kTensor);
//   double s = loom::collective_seconds(loom::Collective::kAllReduce, bytes, mesh.tp, tp);
#pragma once
#include <string>

#include "loom.pb.h"
#include "parallel/mesh.h"

namespace loom {

using ClusterConfig = config::ClusterConfig;

// Reads and checks a cluster file; throws loom::Error naming the file and what is wrong.
ClusterConfig load_cluster(const std::string& path);
// The same from text (`source` names it in errors).
ClusterConfig parse_cluster(const std::string& text, const std::string& source);

// What one collective pays: a base latency, per-hop latency and per-device bandwidth (bytes/s).
struct LinkCost {
  double base_s = 0, hop_s = 0, bytes_per_s = 1;
  bool inter_node = false;  // the group's ring crosses nodes
};

// The link `axis`'s groups use when the job's ranks fill nodes of devices_per_node devices in
// rank order (tp innermost: parallel/mesh.h): the network when any of its groups spans nodes.
LinkCost group_link(const ClusterConfig& cluster, const Mesh& mesh, Axis axis);
// The link between pipeline neighbours (pp group), as group_link, for one send.
LinkCost link_between(const ClusterConfig& cluster, int rank_a, int rank_b);

enum class Collective { kAllReduce, kReduceScatter, kAllGather, kAllToAll, kSendRecv };

// Seconds of `kind` over a ring of `ranks` for `bytes` (the whole buffer an all-reduce reduces,
// a reduce-scatter's input, an all-gather's output, an all-to-all's send buffer, one message):
// base + steps · hop + steps / ranks · bytes / bandwidth, with 2(p − 1) steps for an all-reduce,
// p − 1 for the others and one for a send (NCCL's ring model). 0 for one rank.
double collective_seconds(Collective kind, double bytes, int ranks, const LinkCost& link);

}  // namespace loom
