// The replicated ranges' Adam moments under ZeRO (core/pipeline.h, replica_sync_broadcast):
// made equal across the pipeline stages that hold them owner to owner, so that no rank holds
// more than its own shard of the moments, also while a checkpoint is written.
//
//   loom::replica_sync_moment_shards(replicas, replica_groups, groups, n, owned_of, opt);
#pragma once
#include <functional>
#include <vector>

#include "core/optimizer.h"
#include "core/parallel_layout.h"
#include "core/pipeline.h"
#include "parallel/groups.h"

namespace loom {

// The ranges of pipeline stage `stage` (of `n` parameters) that its dp × sp rank `part` owns,
// in compact order: ZeRO-1's buckets (grad_reducer_owned_by) or ZeRO-2's units
// (grad_windows_owned) as that stage cuts them.
using OwnedOf = std::function<std::vector<ShardRange>(int stage, size_t n, int part)>;

// Under ZeRO the same for the Adam moments, which each rank holds only a shard of: every
// holder's shards of each replicated range ← the lowest holder's elements, sent owner to owner
// over `world`, so no rank holds more than its own shards. This rank's stage has `n` parameters,
// cut into shards over `parts` dp × sp ranks as owned_of says, of which it is `part`; `buffers`
// are its compact shard buffers (host memory, e.g. m and v). rank_of(stage, part) is the world
// rank with that pipeline stage and dp × sp index and this rank's tp coordinate. Collective over
// the world.
void replica_sync_shards(const ReplicaSync& sync, const std::vector<ReplicaGroup>& groups,
                         Communicator& world, size_t n, const OwnedOf& owned_of, int parts,
                         int part, const std::function<int(int stage, int part)>& rank_of,
                         const std::vector<float*>& buffers);

// What each stage's dp × sp ranks own under the layout's ZeRO stage (1: the gradient reducer's
// buckets of the stage's n parameters; 2: the gradient windows' units of that stage's layout at
// tp coordinate `tp_rank`), over `parts` ranks. The OwnedOf keeps references to cfg and layout.
OwnedOf zero_owned_of(const config::RunConfig& cfg, const ParallelLayout& layout, int parts,
                      int tp_rank);

// replica_sync_shards for `optimizer`'s moments (its owned shards of a stage of `n` parameters
// over the dp × sp group); on a device through a host copy of this rank's shard only.
// Collective over the world.
void replica_sync_moment_shards(const ReplicaSync& sync, const std::vector<ReplicaGroup>& groups,
                                const ProcessGroups& g, size_t n, const OwnedOf& owned_of,
                                Optimizer& optimizer);

}  // namespace loom
