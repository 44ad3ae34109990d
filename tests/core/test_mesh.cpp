#include <gtest/gtest.h>

#include "parallel/mesh.h"

namespace loom {
namespace {

TEST(Mesh, RankOrderIsTensorSequenceDataPipeline) {
  const Mesh mesh{.dp = 2, .pp = 3, .sp = 2, .tp = 2};
  EXPECT_EQ(mesh.world_size(), 24);
  for (int rank = 0; rank < mesh.world_size(); ++rank) {
    const MeshCoord c = mesh_coord(mesh, rank);
    EXPECT_EQ(rank, ((c.pp * mesh.dp + c.dp) * mesh.sp + c.sp) * mesh.tp + c.tp);
    EXPECT_EQ(mesh_rank(mesh, c), rank);
  }
  const MeshCoord c = mesh_coord(mesh, 13);  // 13 = ((1·2 + 1)·2 + 0)·2 + 1
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.sp, 0);
  EXPECT_EQ(c.tp, 1);
}

TEST(Mesh, GroupsVaryOneCoordinate) {
  const Mesh mesh{.dp = 2, .pp = 2, .sp = 1, .tp = 2};
  EXPECT_EQ(mesh_group(mesh, 5, Axis::kTensor), (std::vector<int>{4, 5}));
  EXPECT_EQ(mesh_group(mesh, 5, Axis::kData), (std::vector<int>{5, 7}));
  EXPECT_EQ(mesh_group(mesh, 5, Axis::kPipeline), (std::vector<int>{1, 5}));
  EXPECT_EQ(mesh_group(mesh, 5, Axis::kSequence), (std::vector<int>{5}));
}

}  // namespace
}  // namespace loom
