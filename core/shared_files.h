// Start-up checks that every rank of a job sees the same files: the same data set and the same
// run directory. On one node they hold trivially; across nodes they need a file system every
// node shares (or identical copies of the data at the same path), and a mismatch found here is
// a clear error instead of ranks training on different data or checkpoints scattered over nodes.
//
//   loom::check_same_data(*groups.world, groups.placement, {{"data.train_shards", &train}});
//   loom::check_same_run_dir(*groups.world, groups.placement, run_dir);   // after rank 0 made it
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "core/data.h"
#include "loom.pb.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"

namespace loom {

// What every rank of a job must share: its resolved config (after --set), the command line's
// flags that change what is trained, the description of its training data (data.textproto) and
// loom itself (a CRC-32 of the executable's file). mpirun's MPMD form or a node with another
// build could otherwise start ranks that train differently, silently.
struct RankSettings {
  config::RunConfig config;
  std::string flags;      // e.g. "--resume"
  std::string data_info;  // data.textproto beside the training shards, as text ("": none)
  int64_t executable = 0;
};
RankSettings rank_settings(const config::RunConfig& cfg, const std::string& flags);

// Collective over `world`, before anything else of the job. Throws loom::Error on every rank when
// some rank's settings differ from rank 0's, naming the first such rank, how many differ, and
// each field that differs with both values.
void check_same_settings(Communicator& world, const RankSettings& mine);

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

// A CRC-32 of every shard's whole file, shard s computed by rank s mod world.size() and shared
// with every rank (world null: all computed here); collective.
std::vector<int64_t> shard_checksums(Communicator* world, const TokenDataset& data);

// Collective over `world`, after rank 0 created run_dir: rank 0 writes a token file there, every
// rank looks for it (for a few seconds: a network file system may show a new file late), and
// rank 0 removes it. Throws loom::Error on every rank when a rank does not find it, naming the
// ranks and their nodes.
void check_same_run_dir(Communicator& world, const Placement& placement,
                        const std::filesystem::path& run_dir);

}  // namespace loom
