// The 4-D process mesh: data × pipeline × sequence × tensor parallel coordinates of a rank and the
// ranks of each group, in Megatron's order (tensor fastest, then sequence, data, pipeline):
//   rank = ((pp · DP + dp) · SP + sp) · TP + tp
// Pure arithmetic; the communicators built on it come with the distributed runtime.
//
//   loom::Mesh mesh{.dp = 2, .pp = 1, .sp = 1, .tp = 2};
//   loom::MeshCoord c = loom::mesh_coord(mesh, 3);          // {dp 1, pp 0, sp 0, tp 1}
//   std::vector<int> tp_group = loom::mesh_group(mesh, 3, loom::Axis::kTensor);   // {2, 3}
#pragma once
#include <vector>

namespace loom {

struct Mesh {
  int dp = 1, pp = 1, sp = 1, tp = 1;
  int world_size() const { return dp * pp * sp * tp; }
};

struct MeshCoord {
  int dp = 0, pp = 0, sp = 0, tp = 0;
};

enum class Axis { kData, kPipeline, kSequence, kTensor };

MeshCoord mesh_coord(const Mesh& mesh, int rank);
int mesh_rank(const Mesh& mesh, const MeshCoord& coord);

// Ranks that share every coordinate of `rank` except `axis`, ordered by that coordinate.
std::vector<int> mesh_group(const Mesh& mesh, int rank, Axis axis);

}  // namespace loom
