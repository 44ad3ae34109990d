#include "parallel/grad_reducer.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "base/error.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

// Element `i` of a wire buffer.
void* wire_at(const GradWire& w, void* base, size_t i) {
  return static_cast<unsigned char*>(base) + i * w.backend->activation_bytes();
}

void launch(GradReducer& r, GradBucket& b) {
  LOOM_CHECK(!b.work);
  float* data = r.grads + b.range.begin;
  if (const GradWire& w = r.wire; w.backend) {
    void* wire = wire_at(w, w.gradients, b.range.begin);
    w.backend->to_activation(wire, data, b.range.size());
    const DataType type = activation_data_type(*w.backend);
    if (r.zero)
      b.work = r.comm->reduce_scatter_async(wire, wire_at(w, w.shard, b.compact), b.range.size(),
                                            type, ReduceOp::kAvg);
    else
      b.work = r.comm->all_reduce_async(wire, b.range.size(), type, ReduceOp::kAvg);
    return;
  }
  if (r.zero)
    b.work = r.comm->reduce_scatter_async(data, r.shard + b.compact, b.range.size(),
                                          DataType::kFloat32, ReduceOp::kAvg);
  else
    b.work = r.comm->all_reduce_async(data, b.range.size(), DataType::kFloat32, ReduceOp::kAvg);
}

// Waits for every handle before reporting the first failure, so no operation is left touching
// the buffers while the caller unwinds.
void wait_all(std::vector<WorkPtr>& works) {
  std::exception_ptr first;
  for (WorkPtr& w : works) {
    try {
      if (w) w->wait();
    } catch (const CommError&) {
      if (!first) first = std::current_exception();
    }
    w.reset();
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace

std::vector<ShardRange> grad_reducer_owned_by(size_t n, size_t bucket_floats, int parts, int rank) {
  LOOM_CHECK(bucket_floats > 0);
  std::vector<ShardRange> owned;
  for (size_t end = n; end > 0;) {
    const size_t begin = end > bucket_floats ? end - bucket_floats : 0;
    const ShardRange s = shard_range(end - begin, parts, rank);
    owned.push_back({begin + s.begin, begin + s.end});
    end = begin;
  }
  return owned;
}

size_t grad_reducer_shard_floats(size_t n, size_t bucket_floats, int parts, int rank) {
  size_t total = 0;
  for (const ShardRange& r : grad_reducer_owned_by(n, bucket_floats, parts, rank))
    total += r.size();
  return total;
}

GradReducer grad_reducer_create(Communicator& comm, float* grads, size_t n, size_t bucket_floats,
                                bool zero, bool overlap, float* shard, GradWire wire) {
  LOOM_CHECK(bucket_floats > 0);
  GradReducer r;
  r.comm = &comm;
  r.grads = grads;
  r.n = n;
  r.zero = zero;
  r.overlap = overlap;
  size_t compact = 0;
  for (size_t end = n; end > 0;) {
    GradBucket b;
    b.range = {end > bucket_floats ? end - bucket_floats : 0, end};
    if (zero) {
      const ShardRange s = shard_range(b.range.size(), comm.size(), comm.rank());
      b.own = {b.range.begin + s.begin, b.range.begin + s.end};
    } else {
      b.own = b.range;
    }
    b.compact = compact;
    compact += b.own.size();
    r.buckets.push_back(b);
    end = b.range.begin;
  }
  LOOM_CHECK(!zero || compact == 0 || shard);
  if (zero) r.shard = shard;
  LOOM_CHECK(!wire.backend || (wire.gradients && (!zero || compact == 0 || wire.shard)));
  r.wire = wire;
  return r;
}

void grad_reducer_begin(GradReducer& r) {
  for (GradBucket& b : r.buckets) {
    LOOM_CHECK(!b.work);  // the previous step finished
    b.ready = 0;
  }
}

void grad_reducer_ready(GradReducer& r, size_t offset, size_t count) {
  LOOM_CHECK(offset + count <= r.n);
  for (GradBucket& b : r.buckets) {
    const size_t lo = std::max(offset, b.range.begin), hi = std::min(offset + count, b.range.end);
    if (lo >= hi) continue;
    b.ready += hi - lo;
    LOOM_CHECK(b.ready <= b.range.size());  // each gradient reported once
    if (r.overlap && b.ready == b.range.size()) launch(r, b);
  }
}

void grad_reducer_finish(GradReducer& r) {
  for (GradBucket& b : r.buckets) {
    LOOM_CHECK(b.ready == b.range.size());  // backward reported every gradient
    if (!b.work) launch(r, b);
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<WorkPtr> works;
  for (GradBucket& b : r.buckets) works.push_back(std::move(b.work));
  wait_all(works);
  r.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (const GradWire& w = r.wire; w.backend) {  // the averages back into fp32
    for (const GradBucket& b : r.buckets) {
      if (r.zero)
        w.backend->from_activation(r.shard + b.compact, wire_at(w, w.shard, b.compact),
                                   b.own.size());
      else
        w.backend->from_activation(r.grads + b.range.begin, wire_at(w, w.gradients, b.range.begin),
                                   b.range.size());
    }
  }
}

std::vector<ShardRange> grad_reducer_owned(const GradReducer& r) {
  if (!r.zero) return {ShardRange{0, r.n}};
  std::vector<ShardRange> owned;
  for (const GradBucket& b : r.buckets) owned.push_back(b.own);
  return owned;
}

void grad_reducer_gather(GradReducer& r, const float* compact, float* full) {
  LOOM_CHECK(r.zero);
  std::vector<WorkPtr> works;
  for (const GradBucket& b : r.buckets)
    works.push_back(r.comm->all_gather_async(compact + b.compact, full + b.range.begin,
                                             b.range.size(), DataType::kFloat32));
  wait_all(works);
}

void grad_reducer_gather_in_place(GradReducer& r, float* params) {
  LOOM_CHECK(r.zero);
  std::vector<WorkPtr> works;
  for (const GradBucket& b : r.buckets)
    works.push_back(r.comm->all_gather_async(params + b.own.begin, params + b.range.begin,
                                             b.range.size(), DataType::kFloat32));
  wait_all(works);
}

}  // namespace loom
