// The nodes of a multi-node job as the user names them: an Open MPI hostfile (`host slots=N`
// lines), a --hosts list ("a:4,b:4"), or the Slurm allocation loom runs inside
// (SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE). Ranks fill them in order (parallel/placement.h).
//
//   std::vector<loom::NodeSlots> nodes = loom::hostfile_read("hosts.txt");
//   loom::Placement p = loom::placement_fill(nodes, world);
#pragma once
#include <string>
#include <vector>

#include "launcher/spawn.h"
#include "parallel/placement.h"

namespace loom {

// The most ranks per core `loom train` starts on this machine alone (without --oversubscribe):
// more crawl and can exhaust memory and process limits. `loom plan` takes a larger world for a
// layout meant for other machines.
constexpr int kLocalRanksPerCore = 8;

// Reads an Open MPI hostfile: one `host slots=N [max_slots=M]` per line, `#` comments, a host
// listed twice adds its slots. Throws loom::Error naming the file and line of what is wrong,
// including a host without slots= (Open MPI would count the node's cores, which loom cannot see
// from here to place the ranks).
std::vector<NodeSlots> hostfile_read(const std::string& path);

// Parses --hosts "a:4,b:4" (a host without ":N" has one slot, as for mpirun --host).
std::vector<NodeSlots> hosts_parse(const std::string& spec);

// Expands a Slurm host list: "node[1-3,7],gpu[01-02]" -> node1 node2 node3 node7 gpu01 gpu02.
// Throws loom::Error on an unbalanced bracket or a bad range.
std::vector<std::string> slurm_hostlist_expand(const std::string& list);

// The allocation's nodes with their tasks (SLURM_JOB_NODELIST, SLURM_TASKS_PER_NODE such as
// "2(x3),1"); empty outside an allocation or when either is unset.
std::vector<NodeSlots> slurm_allocation_nodes(const GetEnv& env);

// "node1: ranks 0-3; node2: ranks 4-7" (rank runs shortened). Of more than 4 nodes the first 3
// and the last, "node1: ranks 0-7; …; node512: ranks 4088-4095 (512 nodes)", and likewise of a
// node's rank runs: a line whatever the world size, in time linear in the ranks.
std::string placement_summary(const Placement& placement);

}  // namespace loom
