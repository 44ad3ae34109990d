// Start-up checks that every rank of a job sees the same files: the same data set and the same
// run directory. On one node they hold trivially; across nodes they need a file system every
// node shares (or identical copies of the data at the same path), and a mismatch found here is
// a clear error instead of ranks training on different data or checkpoints scattered over nodes.
//
//   loom::check_same_data(*groups.world, groups.placement, {{"data.train_shards", &train}});
//   loom::check_same_run_dir(*groups.world, groups.placement, run_dir);   // after rank 0 made it
#pragma once
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/data.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"

namespace loom {

// What a rank's view of a data set is summarised by: shard count, tokens, and a CRC-32 over the
// shards' file names and sizes and the first shard's header.
struct DataSetView {
  int64_t shards = 0, tokens = 0, digest = 0;
  bool operator==(const DataSetView&) const = default;
};
DataSetView data_set_view(const TokenDataset& data);

// Collective over `world`. Throws loom::Error on every rank when some rank's view of a named
// data set differs from rank 0's, naming the config field, the ranks and their nodes, and both
// views.
void check_same_data(Communicator& world, const Placement& placement,
                     const std::vector<std::pair<std::string, const TokenDataset*>>& sets);

// Collective over `world`, after rank 0 created run_dir: rank 0 writes a token file there, every
// rank looks for it (for a few seconds: a network file system may show a new file late), and
// rank 0 removes it. Throws loom::Error on every rank when a rank does not find it, naming the
// ranks and their nodes.
void check_same_run_dir(Communicator& world, const Placement& placement,
                        const std::filesystem::path& run_dir);

}  // namespace loom
