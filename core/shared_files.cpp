#include "core/shared_files.h"

#include <google/protobuf/util/message_differencer.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <random>
#include <thread>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/config.h"
#include "core/file_io.h"
#include "core/tokenizer.h"

namespace loom {
namespace {

constexpr double kRunDirWaitS = 5;  // how long a rank looks for rank 0's token file

// "rank 2 (node2)", or "ranks 2,3 (node2)" / "ranks 2 (node2), 5 (node3)".
std::string ranks_on_nodes(const std::vector<int>& ranks, const Placement& placement) {
  std::string out;
  for (int r : ranks)
    out += (out.empty() ? "" : ", ") + std::to_string(r) + " (" +
           placement.nodes[placement.node_of_rank[r]] + ")";
  return (ranks.size() == 1 ? "rank " : "ranks ") + out;
}

std::string describe(const DataSetView& v) {
  return std::to_string(v.shards) + " shard" + (v.shards == 1 ? "" : "s") + ", " +
         std::to_string(v.tokens) + " tokens, digest " + std::to_string(v.digest);
}

// Rank `root`'s `text` on every rank.
void broadcast_text(Communicator& world, std::string& text, int root = 0) {
  int64_t size = static_cast<int64_t>(text.size());
  world.broadcast_async(&size, 1, DataType::kInt64, root)->wait();
  text.resize(static_cast<size_t>(size));
  if (size > 0) world.broadcast_async(text.data(), text.size(), DataType::kByte, root)->wait();
}

// A CRC-32 of this process's executable file (0 when it cannot be read).
int64_t executable_crc() {
  std::ifstream in("/proc/self/exe", std::ios::binary);
  uint32_t crc = 0;
  std::vector<char> block(size_t{1} << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    crc = crc32_of(block.data(), static_cast<size_t>(in.gcount()), crc);
  }
  return in.eof() ? static_cast<int64_t>(crc) : 0;
}

// What differs between rank 0's settings and `mine` ("": nothing), field by field.
std::string settings_difference(const RankSettings& first, const RankSettings& mine) {
  std::string report;
  {
    google::protobuf::util::MessageDifferencer differ;
    differ.ReportDifferencesToString(&report);
    differ.Compare(first.config, mine.config);
  }
  std::string out;
  size_t begin = 0;
  while (begin < report.size()) {  // "modified: optim.lr: 0.001 -> 0.002\n" ...
    size_t end = report.find('\n', begin);
    if (end == std::string::npos) end = report.size();
    out += (out.empty() ? "" : "; ") + report.substr(begin, end - begin);
    begin = end + 1;
  }
  auto add = [&](const char* what, const std::string& a, const std::string& b) {
    if (a != b)
      out += (out.empty() ? "" : "; ") + std::string(what) + ": \"" + a + "\" -> \"" + b + "\"";
  };
  add("command-line flags", first.flags, mine.flags);
  add("the training data's description (data.textproto)", first.data_info, mine.data_info);
  if (first.executable != mine.executable)
    out += std::string(out.empty() ? "" : "; ") + "the loom executable (another build: CRC-32 " +
           std::to_string(first.executable) + " -> " + std::to_string(mine.executable) + ")";
  return out;
}

}  // namespace

RankSettings rank_settings(const config::RunConfig& cfg, const std::string& flags) {
  RankSettings s;
  s.config = cfg;
  s.flags = flags;
  std::string dir;
  if (const std::optional<config::DataInfo> info =
          data_info_for_shards(cfg.data().train_shards(), &dir))
    s.data_info = info->ShortDebugString();
  s.executable = executable_crc();
  return s;
}

void check_same_settings(Communicator& world, const RankSettings& mine) {
  RankSettings first;
  std::string config = world.rank() == 0 ? config_to_text(mine.config) : "";
  broadcast_text(world, config);
  first.config = parse_config_text(config, "rank 0's config");
  first.flags = mine.flags;
  first.data_info = mine.data_info;
  broadcast_text(world, first.flags);
  broadcast_text(world, first.data_info);
  first.executable = mine.executable;
  world.broadcast_async(&first.executable, 1, DataType::kInt64, 0)->wait();
  std::string difference = settings_difference(first, mine);
  // The first rank that differs says how; every rank stops with its words.
  // {-(the lowest rank that differs), how many differ}; no reduction takes a minimum.
  int64_t flags[2] = {-(difference.empty() ? world.size() : world.rank()),
                      difference.empty() ? 0 : 1};
  world.all_reduce_async(&flags[0], 1, DataType::kInt64, ReduceOp::kMax)->wait();
  const int64_t first_rank = -flags[0];
  if (first_rank == world.size()) return;
  world.all_reduce_async(&flags[1], 1, DataType::kInt64, ReduceOp::kSum)->wait();
  broadcast_text(world, difference, static_cast<int>(first_rank));
  throw Error("the ranks were started with different settings: " + std::to_string(flags[1]) +
              " of " + std::to_string(world.size()) + " ranks differ from rank 0; rank " +
              std::to_string(first_rank) + " (rank 0's -> its own): " + difference +
              ". Start every rank with the same command line, config and build");
}

DataSetView data_set_view(const TokenDataset& data) {
  DataSetView view;
  uint32_t crc = 0;
  for (const Shard& shard : data.shards) {
    const std::string name = std::filesystem::path(shard.path).filename().string();
    const uint64_t tokens = shard.num_tokens;
    crc = crc32_of(name.data(), name.size() + 1, crc);
    crc = crc32_of(&tokens, sizeof(tokens), crc);
    view.tokens += static_cast<int64_t>(tokens);
  }
  view.shards = static_cast<int64_t>(data.shards.size());
  if (!data.shards.empty()) {
    // The header as the file holds it (magic, version, count and the reserved words).
    int32_t header[kShardHeaderInts] = {};
    const ssize_t got = pread(*data.shards.front().fd, header, sizeof(header), 0);
    if (got != static_cast<ssize_t>(sizeof(header)))
      throw Error("cannot read the header of " + data.shards.front().path);
    crc = crc32_of(header, sizeof(header), crc);
  }
  view.digest = static_cast<int64_t>(crc);
  return view;
}

void check_same_data(Communicator& world, const Placement& placement,
                     const std::vector<std::pair<std::string, const TokenDataset*>>& sets) {
  const size_t n = static_cast<size_t>(world.size());
  for (const auto& [field, data] : sets) {
    const DataSetView mine = data_set_view(*data);
    int64_t local[3] = {mine.shards, mine.tokens, mine.digest};
    std::vector<int64_t> all(3 * n);
    world.all_gather_async(local, all.data(), all.size(), DataType::kInt64)->wait();
    auto view_of = [&](size_t r) { return DataSetView{all[3 * r], all[3 * r + 1], all[3 * r + 2]}; };
    std::vector<int> differ;
    for (size_t r = 1; r < n; ++r)
      if (!(view_of(r) == view_of(0))) differ.push_back(static_cast<int>(r));
    if (differ.empty()) continue;
    throw Error(ranks_on_nodes(differ, placement) + (differ.size() == 1 ? " sees" : " see") +
                " another data set for " + field + " \"" +
                data->pattern + "\" than " + ranks_on_nodes({0}, placement) + ": " +
                describe(view_of(static_cast<size_t>(differ.front()))) + " against " +
                describe(view_of(0)) +
                "; every node must see the same shards at the same path (a shared file system, "
                "or identical copies)");
  }
}

std::vector<int64_t> shard_checksums(Communicator* world, const TokenDataset& data) {
  const int ranks = world ? world->size() : 1, rank = world ? world->rank() : 0;
  std::vector<int64_t> crcs(data.shards.size(), 0);
  for (size_t s = static_cast<size_t>(rank); s < data.shards.size();
       s += static_cast<size_t>(ranks)) {
    const Shard& shard = data.shards[s];
    crcs[s] = crc32_of(shard.mapping.get(), static_cast<size_t>(shard.file_bytes));
  }
  if (world && ranks > 1 && !crcs.empty())
    world->all_reduce_async(crcs.data(), crcs.size(), DataType::kInt64, ReduceOp::kSum)->wait();
  return crcs;
}

void check_same_run_dir(Communicator& world, const Placement& placement,
                        const std::filesystem::path& run_dir) {
  const std::filesystem::path token_path = run_dir / ".loom-job-token";
  int64_t token = 0;
  if (world.rank() == 0) {
    token = static_cast<int64_t>(std::random_device{}() & 0x7fffffff) << 31 ^
            static_cast<int64_t>(std::random_device{}() & 0x7fffffff);
    std::ofstream out(token_path, std::ios::trunc);
    out << token << '\n';
    out.close();
    if (!out) throw Error("cannot write " + token_path.string());
  }
  world.broadcast_async(&token, 1, DataType::kInt64, 0)->wait();
  int64_t found = world.rank() == 0 ? 1 : 0;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(kRunDirWaitS);
  while (!found) {
    std::ifstream in(token_path);
    int64_t seen = 0;
    if (in >> seen && seen == token) found = 1;
    if (found || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<int64_t> all(static_cast<size_t>(world.size()));
  world.all_gather_async(&found, all.data(), all.size(), DataType::kInt64)->wait();
  if (world.rank() == 0) std::filesystem::remove(token_path);
  std::vector<int> missing;
  for (int r = 0; r < world.size(); ++r)
    if (!all[static_cast<size_t>(r)]) missing.push_back(r);
  if (missing.empty()) return;
  throw Error(ranks_on_nodes(missing, placement) + " cannot see the run directory " +
              run_dir.string() + " that " + ranks_on_nodes({0}, placement) +
              " created: it must be on a file system every node shares (every rank writes its "
              "checkpoint shard and flight dump there)");
}

}  // namespace loom
