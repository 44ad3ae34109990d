#include "parallel/groups.h"

#include <unistd.h>

#include <algorithm>
#include <climits>

#include "base/error.h"

namespace loom {

std::string ProcessGroups::label() const {
  return "[rank " + std::to_string(rank) + " dp=" + std::to_string(coord.dp) +
         " pp=" + std::to_string(coord.pp) + " sp=" + std::to_string(coord.sp) +
         " tp=" + std::to_string(coord.tp) +
         (placement.nodes.size() > 1 ? " node=" + node() : std::string()) + "]";
}

int ProcessGroups::local_rank() const {
  if (placement.node_of_rank.empty()) return 0;  // a single process
  const int node = placement.node_of_rank[rank];
  int before = 0;
  for (int r = 0; r < rank; ++r) before += placement.node_of_rank[r] == node;
  return before;
}

ProcessGroups process_groups_create(MpiRuntime* mpi, const Mesh& mesh) {
  ProcessGroups g;
  g.mesh = mesh;
  g.mpi = mpi;
  if (!mpi) {
    LOOM_CHECK(mesh.world_size() == 1);
    for (auto [slot, name] : {std::pair{&g.world, "world"}, {&g.dp, "dp"}, {&g.pp, "pp"},
                               {&g.sp, "sp"}, {&g.tp, "tp"}, {&g.dp_sp, "dp_sp"}})
      *slot = make_self_communicator(name, 0);
    char name[HOST_NAME_MAX + 1] = {};
    g.placement = placement_of_hosts({gethostname(name, HOST_NAME_MAX) == 0 ? name : "localhost"});
    return g;
  }
  const int world = mpi_world_size(*mpi);
  if (world != mesh.world_size()) {
    const int others = mesh.pp * mesh.sp * mesh.tp;
    throw Error("the job has " + std::to_string(world) + " ranks but the config's layout needs " +
                "dp × pp × sp × tp = " + std::to_string(mesh.dp) + " × " + std::to_string(mesh.pp) +
                " × " + std::to_string(mesh.sp) + " × " + std::to_string(mesh.tp) + " = " +
                std::to_string(mesh.world_size()) + "; start " + std::to_string(mesh.world_size()) +
                " ranks, or set parallel.dp" +
                (world % others == 0 ? " to " + std::to_string(world / others) +
                                           " (with a train.global_batch it divides)"
                                     : " (and tp, pp, sp) so that their product is " +
                                           std::to_string(world)));
  }
  g.rank = mpi_world_rank(*mpi);
  g.local_ranks = mpi_local_size(*mpi);
  g.placement = placement_of_hosts(mpi_host_names(*mpi));
  g.coord = mesh_coord(mesh, g.rank);
  const MeshCoord c = g.coord;
  // A group's color is the rank of its first member; the key orders members by the coordinate.
  auto split = [&](const char* name, Axis axis, int key) {
    return mpi_split(*mpi, name, mesh_group(mesh, g.rank, axis).front(), key);
  };
  g.world = mpi_world(*mpi);
  g.tp = split("tp", Axis::kTensor, c.tp);
  g.sp = split("sp", Axis::kSequence, c.sp);
  g.dp = split("dp", Axis::kData, c.dp);
  g.pp = split("pp", Axis::kPipeline, c.pp);
  // dp × sp: same pp and tp coordinates.
  g.dp_sp = mpi_split(*mpi, "dp_sp", c.pp * mesh.tp + c.tp, c.dp * mesh.sp + c.sp);
  return g;
}

void process_groups_add_tp_gather(ProcessGroups& g) {
  if (!g.mpi || g.mesh.tp == 1) return;
  g.tp_gather =
      mpi_split(*g.mpi, "tp_gather", mesh_group(g.mesh, g.rank, Axis::kTensor).front(), g.coord.tp);
}

std::unique_ptr<Communicator> process_groups_pipeline_subset(ProcessGroups& g,
                                                              const std::vector<int>& pp_members,
                                                              const std::string& name) {
  LOOM_CHECK(g.mpi);
  const bool member = std::find(pp_members.begin(), pp_members.end(), g.coord.pp) != pp_members.end();
  MeshCoord first = g.coord;
  first.pp = pp_members.front();
  // Members share the color of the group's first rank; every other rank gets a group of its own.
  const int color = member ? mesh_rank(g.mesh, first) : g.mesh.world_size() + g.rank;
  std::unique_ptr<Communicator> comm = mpi_split(*g.mpi, name, color, g.coord.pp);
  return member ? std::move(comm) : nullptr;
}

}  // namespace loom
