#include "core/shared_files.h"

#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "base/error.h"

namespace loom {
namespace {

constexpr double kRunDirWaitS = 5;  // how long a rank looks for rank 0's token file

uLong crc_of(uLong crc, const void* data, size_t bytes) {
  return crc32(crc, static_cast<const Bytef*>(data), static_cast<uInt>(bytes));
}

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

}  // namespace

DataSetView data_set_view(const TokenDataset& data) {
  DataSetView view;
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const Shard& shard : data.shards) {
    const std::string name = std::filesystem::path(shard.path).filename().string();
    const uint64_t tokens = shard.num_tokens;
    crc = crc_of(crc, name.data(), name.size() + 1);
    crc = crc_of(crc, &tokens, sizeof(tokens));
    view.tokens += static_cast<int64_t>(tokens);
  }
  view.shards = static_cast<int64_t>(data.shards.size());
  if (!data.shards.empty()) {
    // The header as the file holds it (magic, version, count and the reserved words).
    int32_t header[kShardHeaderInts] = {};
    const ssize_t got = pread(*data.shards.front().fd, header, sizeof(header), 0);
    if (got != static_cast<ssize_t>(sizeof(header)))
      throw Error("cannot read the header of " + data.shards.front().path);
    crc = crc_of(crc, header, sizeof(header));
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
