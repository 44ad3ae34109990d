#include "core/param_shards.h"

#include <algorithm>

#include "base/error.h"

namespace loom {
namespace {

// Visits each run of contiguous elements rank `rank` holds: fn(global_index, local_index, count,
// is_padding). Global dimension shard_dim is the groups' sizes G_g in turn; the shard's holds
// L_g = ⌈G_g / tp⌉ of each (several groups are divided exactly), local slice l of a group being
// global slice rank·L_g + l (padding when that is ≥ G_g).
template <typename Fn>
void for_each_run(const ParamTensor& t, int rank, Fn fn) {
  if (t.shard_dim < 0) {
    fn(size_t{0}, size_t{0}, t.size, false);
    return;
  }
  const int d = t.shard_dim;
  size_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= static_cast<size_t>(t.global_shape[i]);
  for (size_t i = d + 1; i < t.global_shape.size(); ++i) inner *= static_cast<size_t>(t.global_shape[i]);
  const std::vector<int64_t> groups =
      t.shard_groups.empty() ? std::vector<int64_t>{t.global_shape[d]} : t.shard_groups;
  const size_t global_width = static_cast<size_t>(t.global_shape[d]);
  const size_t local_width = static_cast<size_t>(t.shape[d]);
  for (size_t o = 0; o < outer; ++o) {
    size_t global_at = 0, local_at = 0;  // the group's start along shard_dim
    for (const int64_t group : groups) {
      const size_t G = static_cast<size_t>(group);
      // One group may be padded (a vocabulary); several are each cut exactly (G_g / tp).
      const size_t L = groups.size() == 1 ? local_width : G * local_width / global_width;
      const size_t first = static_cast<size_t>(rank) * L;
      const size_t real = first >= G ? 0 : std::min(L, G - first);
      const size_t local = (o * local_width + local_at) * inner;
      if (real > 0) fn((o * global_width + global_at + first) * inner, local, real * inner, false);
      if (real < L) fn(size_t{0}, local + real * inner, (L - real) * inner, true);
      global_at += G;
      local_at += L;
    }
  }
}

}  // namespace

std::vector<ShardRun> tensor_shard_runs(const ParamTensor& t, int rank) {
  std::vector<ShardRun> runs;
  for_each_run(t, rank, [&](size_t g, size_t l, size_t n, bool padding) {
    runs.push_back({g, l, n, padding});
  });
  return runs;
}

size_t tensor_global_size(const ParamTensor& t) {
  size_t n = 1;
  for (int64_t d : t.global_shape) n *= static_cast<size_t>(d);
  return n;
}

void tensor_shard_extract(const ParamTensor& t, int rank, const float* global, float* local) {
  for_each_run(t, rank, [&](size_t g, size_t l, size_t n, bool padding) {
    if (padding)
      std::fill_n(local + l, n, 0.0f);
    else
      std::copy_n(global + g, n, local + l);
  });
}

void tensor_shard_insert(const ParamTensor& t, int rank, const float* local, float* global) {
  for_each_run(t, rank, [&](size_t g, size_t l, size_t n, bool padding) {
    if (!padding) std::copy_n(local + l, n, global + g);
  });
}

size_t model_global_floats(const Model& m) {
  size_t n = 0;
  for (const ParamTensor& t : m.layout.tensors) n += tensor_global_size(t);
  return n;
}

void model_gather_global(const Model& m, const float* local, std::vector<float>& global) {
  if (m.par.tp.rank != 0) {  // sends its shards to rank 0 of the group
    m.par.tp.comm->send(local, m.layout.num_params, DataType::kFloat32, 0);
    global.clear();
    return;
  }
  global.assign(model_global_floats(m), 0.0f);
  // One rank's buffer at a time: rank 0 holds the global buffer and one local buffer more.
  std::vector<float> received(m.par.tp.size > 1 ? m.layout.num_params : 0);
  for (int r = 0; r < m.par.tp.size; ++r) {
    const float* from = local;
    if (r > 0) {
      m.par.tp.comm->recv(received.data(), m.layout.num_params, DataType::kFloat32, r);
      from = received.data();
    }
    size_t at = 0;
    for (const ParamTensor& t : m.layout.tensors) {
      // Replicated tensors are the same on every rank: rank 0's copy.
      if (t.shard_dim >= 0 || r == 0) tensor_shard_insert(t, r, from + t.offset, global.data() + at);
      at += tensor_global_size(t);
    }
  }
}

double grad_sum_squares(const Model& m, const std::vector<ShardRange>& owned, const float* grads) {
  size_t total = 0;
  for (const ShardRange& r : owned) total += r.size();
  const bool replicas = m.par.stage.plan.pp > 1;
  if (m.par.tp.size == 1 && !replicas) return m.buf.backend->sum_squares(grads, total);
  double sum = 0.0;
  size_t compact = 0;
  for (const ShardRange& r : owned) {
    for (const ParamTensor& t : m.layout.tensors) {
      if (t.shard_dim < 0 && m.par.tp.rank != 0) continue;
      if (t.pp_holders.front() != m.par.stage.rank) continue;  // another stage's replica counts it
      const size_t lo = std::max(r.begin, t.offset), hi = std::min(r.end, t.offset + t.size);
      if (lo < hi) sum += m.buf.backend->sum_squares(grads + compact + (lo - r.begin), hi - lo);
    }
    compact += r.size();
  }
  return sum;
}

}  // namespace loom
