#include "parallel/mesh.h"

namespace loom {

MeshCoord mesh_coord(const Mesh& mesh, int rank) {
  MeshCoord c;
  c.tp = rank % mesh.tp;
  rank /= mesh.tp;
  c.sp = rank % mesh.sp;
  rank /= mesh.sp;
  c.dp = rank % mesh.dp;
  c.pp = rank / mesh.dp;
  return c;
}

int mesh_rank(const Mesh& mesh, const MeshCoord& c) {
  return ((c.pp * mesh.dp + c.dp) * mesh.sp + c.sp) * mesh.tp + c.tp;
}

std::vector<int> mesh_group(const Mesh& mesh, int rank, Axis axis) {
  const MeshCoord base = mesh_coord(mesh, rank);
  const int size = axis == Axis::kData       ? mesh.dp
                   : axis == Axis::kPipeline ? mesh.pp
                   : axis == Axis::kSequence ? mesh.sp
                                             : mesh.tp;
  std::vector<int> ranks;
  for (int i = 0; i < size; ++i) {
    MeshCoord c = base;
    (axis == Axis::kData ? c.dp : axis == Axis::kPipeline ? c.pp : axis == Axis::kSequence ? c.sp : c.tp) = i;
    ranks.push_back(mesh_rank(mesh, c));
  }
  return ranks;
}

}  // namespace loom
