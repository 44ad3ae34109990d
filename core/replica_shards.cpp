// replica_sync_shards (core/replica_shards.h): the replicated ranges' Adam moments under ZeRO,
// moved between the ranks that own them on each holder stage.
//
// A replicated range R sits at another offset in each holder stage's flat buffer, and each stage
// cuts its buffer into ZeRO shards by its own size, so element x of R may belong to dp × sp rank
// 2 on the lowest holder and to rank 0 on another. Every rank computes, from the stages' sizes and
// R's offsets (exchanged over R's replica group), which of its elements go to or come from which
// rank, in R's own coordinates; sender and receiver list the pieces of a pair in the same order
// (ranges in the shared order, then position in R), so one message per pair carries them all.
#include "core/replica_shards.h"

#include <algorithm>
#include <map>

#include "base/error.h"
#include "core/memory_model.h"
#include "parallel/grad_reducer.h"

namespace loom {
namespace {

// A part of R held in a shard: [begin, end) in R's coordinates, and where `begin` lies in the
// shard's compact buffer.
struct Held {
  size_t begin = 0, end = 0, compact = 0;
};

// What a rank owning `owned` (compact order) holds of R = [offset, offset + length).
std::vector<Held> held_of(const std::vector<ShardRange>& owned, size_t offset, size_t length) {
  std::vector<Held> out;
  size_t compact = 0;
  for (const ShardRange& o : owned) {
    const size_t lo = std::max(o.begin, offset), hi = std::min(o.end, offset + length);
    if (lo < hi) out.push_back({lo - offset, hi - offset, compact + (lo - o.begin)});
    compact += o.size();
  }
  std::sort(out.begin(), out.end(), [](const Held& a, const Held& b) { return a.begin < b.begin; });
  return out;
}

struct Piece {
  size_t compact = 0, count = 0;  // in this rank's shard buffer
};

// The pieces where `from` (the sender's) and `to` (the receiver's) overlap, at the compact
// offsets of `side` (one of the two), in R's order.
void overlaps(const std::vector<Held>& from, const std::vector<Held>& to, bool senders_side,
              std::vector<Piece>& out) {
  for (size_t i = 0, j = 0; i < from.size() && j < to.size();) {
    const size_t lo = std::max(from[i].begin, to[j].begin), hi = std::min(from[i].end, to[j].end);
    if (lo < hi) {
      const Held& mine = senders_side ? from[i] : to[j];
      out.push_back({mine.compact + (lo - mine.begin), hi - lo});
    }
    (from[i].end < to[j].end) ? ++i : ++j;
  }
}

}  // namespace

void replica_sync_shards(const ReplicaSync& sync, const std::vector<ReplicaGroup>& groups,
                         Communicator& world, size_t n, const OwnedOf& owned_of, int parts,
                         int part, const std::function<int(int stage, int part)>& rank_of,
                         const std::vector<float*>& buffers) {
  std::map<int, std::vector<Piece>> sends, receives;  // by world rank
  std::map<std::pair<int, int>, std::vector<ShardRange>> owned;  // by (stage, part)
  for (const ReplicaSync::Range& r : sync.ranges) {   // the shared order
    const ReplicaGroup* group = nullptr;
    for (const ReplicaGroup& g : groups)
      if (g.comm.get() == r.comm) group = &g;
    LOOM_CHECK(group && static_cast<int>(group->holders.size()) == r.comm->size());
    // Every holder's stage size and the range's offset there (group rank k: holders[k]).
    const int64_t mine[2] = {static_cast<int64_t>(n), static_cast<int64_t>(r.range.begin)};
    std::vector<int64_t> layout(2 * group->holders.size());
    // (all_gather's count is the whole output's: 2 per holder.)
    r.comm->all_gather_async(mine, layout.data(), layout.size(), DataType::kInt64)->wait();
    const size_t length = r.range.size();
    auto held = [&](int k, int q) {
      const int stage = group->holders[static_cast<size_t>(k)];
      auto [at, added] = owned.try_emplace({stage, q});
      if (added) at->second = owned_of(stage, static_cast<size_t>(layout[2 * k]), q);
      return held_of(at->second, static_cast<size_t>(layout[2 * k + 1]), length);
    };
    const int me = r.comm->rank();
    if (me == 0) {  // the lowest holder sends its elements to every other holder's owners
      const std::vector<Held> own = held(0, part);
      for (int k = 1; k < r.comm->size(); ++k)
        for (int q = 0; q < parts; ++q)
          overlaps(own, held(k, q), true, sends[rank_of(group->holders[k], q)]);
    } else {
      const std::vector<Held> own = held(me, part);
      for (int q = 0; q < parts; ++q)
        overlaps(held(0, q), own, false, receives[rank_of(group->holders[0], q)]);
    }
  }
  auto floats = [&](const std::vector<Piece>& pieces) {
    size_t total = 0;
    for (const Piece& p : pieces) total += p.count;
    return total * buffers.size();
  };
  // One message each way per pair of ranks (none where nothing overlaps: both sides know).
  std::vector<std::pair<const std::vector<Piece>*, std::vector<float>>> in, out;
  std::vector<WorkPtr> works;
  for (auto& [peer, pieces] : receives) {
    if (floats(pieces) == 0) continue;
    auto& [of, data] = in.emplace_back(&pieces, std::vector<float>(floats(pieces)));
    works.push_back(world.recv_async(data.data(), data.size(), DataType::kFloat32, peer));
  }
  for (auto& [peer, pieces] : sends) {
    if (floats(pieces) == 0) continue;
    auto& [of, data] = out.emplace_back(&pieces, std::vector<float>());
    data.reserve(floats(pieces));
    for (float* buffer : buffers)
      for (const Piece& p : pieces)
        data.insert(data.end(), buffer + p.compact, buffer + p.compact + p.count);
    works.push_back(world.send_async(data.data(), data.size(), DataType::kFloat32, peer));
  }
  for (WorkPtr& w : works) w->wait();
  for (const auto& [pieces, data] : in) {
    const float* at = data.data();
    for (float* buffer : buffers)
      for (const Piece& p : *pieces) {
        std::copy(at, at + p.count, buffer + p.compact);
        at += p.count;
      }
  }
}

OwnedOf zero_owned_of(const config::RunConfig& cfg, const ParallelLayout& layout, int parts,
                      int tp_rank) {
  if (!layout.zero_grads)
    return [bucket = layout.bucket_floats, parts](int, size_t n, int part) {
      return grad_reducer_owned_by(n, bucket, parts, part);
    };
  return [&cfg, &layout, parts, tp_rank](int stage, size_t n, int part) {
    const Model m = stage_layout(cfg, layout, stage, tp_rank);
    LOOM_CHECK(m.layout.num_params == n);
    return grad_windows_owned(
        grad_windows_plan(model_grad_units(m), layout.grad_window_slots, parts, part));
  };
}

void replica_sync_moment_shards(const ReplicaSync& sync, const std::vector<ReplicaGroup>& groups,
                                const ProcessGroups& g, size_t n, const OwnedOf& owned_of,
                                Optimizer& optimizer) {
  auto rank_of = [&](int stage, int part) {
    return mesh_rank(g.mesh, {part / g.mesh.sp, stage, part % g.mesh.sp, g.coord.tp});
  };
  kernels::DeviceArray<float>* moments[2] = {&optimizer.m, &optimizer.v};
  std::vector<float> copies[2];
  std::vector<float*> buffers;
  for (int i = 0; i < 2; ++i) {
    float* host = moments[i]->host_data();
    if (!host) copies[i] = moments[i]->download();
    buffers.push_back(host ? host : copies[i].data());
  }
  replica_sync_shards(sync, groups, *g.world, n, owned_of, g.dp_sp->size(), g.dp_sp->rank(),
                      rank_of, buffers);
  for (int i = 0; i < 2; ++i)
    if (!moments[i]->host_data()) moments[i]->upload(copies[i]);
}

}  // namespace loom
