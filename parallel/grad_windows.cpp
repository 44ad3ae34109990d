#include "parallel/grad_windows.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "base/error.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

GradUnit& unit_of(GradWindows& w, size_t offset) {
  std::vector<GradUnit>& units = w.plan.units;
  auto it = std::upper_bound(units.begin(), units.end(), offset,
                             [](size_t x, const GradUnit& u) { return x < u.range.begin; });
  LOOM_CHECK(it != units.begin());
  GradUnit& u = *(it - 1);
  LOOM_CHECK(offset < u.range.end);
  return u;
}

float* received_of(GradWindows& w, int slot) {
  return w.received + static_cast<size_t>(slot) * w.plan.received_floats;
}

// Waits for the oldest slot's reduce-scatter, adds its result into the shard and frees it.
void retire_oldest(GradWindows& w) {
  LOOM_CHECK(!w.reducing.empty());
  const int s = w.reducing.front();
  w.reducing.erase(w.reducing.begin());
  GradSlot& slot = w.slots[static_cast<size_t>(s)];
  const auto start = Clock::now();
  slot.work->wait();
  w.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  slot.work.reset();
  const GradUnit& u = w.plan.units[static_cast<size_t>(slot.unit)];
  w.backend->accumulate(w.shard + u.compact, received_of(w, s), u.own.size());
  slot.unit = -1;
}

void open_slot(GradWindows& w, GradUnit& u, int index) {
  auto free = [&w] {
    for (size_t s = 0; s < w.slots.size(); ++s)
      if (w.slots[s].unit < 0) return static_cast<int>(s);
    return -1;
  };
  int s = free();
  while (s < 0) {                     // every slot open or reducing: the oldest reduction frees one
    LOOM_CHECK(!w.reducing.empty());  // grad_windows_plan: more slots than backward keeps open
    retire_oldest(w);
    s = free();
  }
  w.slots[static_cast<size_t>(s)].unit = index;
  u.slot = s;
  u.window = w.storage + w.plan.dedicated_floats + static_cast<size_t>(s) * w.plan.slot_floats;
  w.backend->zero_bytes(u.window, u.range.size() * sizeof(float));
}

void launch_step_long(GradWindows& w, GradUnit& u) {
  u.work = w.comm->reduce_scatter_async(u.window, w.shard + u.compact, u.range.size(),
                                        DataType::kFloat32, ReduceOp::kAvg);
}

void launch_slot(GradWindows& w, GradUnit& u) {
  GradSlot& slot = w.slots[static_cast<size_t>(u.slot)];
  slot.work = w.comm->reduce_scatter_async(u.window, received_of(w, u.slot), u.range.size(),
                                           DataType::kFloat32, ReduceOp::kAvg);
  w.reducing.push_back(u.slot);
  u.window = nullptr;  // the next write opens another slot
  u.slot = -1;
}

}  // namespace

GradWindowsPlan grad_windows_plan(const std::vector<GradUnitSpec>& units, int slots, int parts,
                                  int rank) {
  LOOM_CHECK(slots == 0 || slots >= 2);
  GradWindowsPlan plan;
  plan.slots = slots;
  // Slots that would hold as much as the per-micro-batch units together: whole windows for the
  // step instead, reduced once (less traffic, no reduce-scatter results to keep).
  size_t per_micro = 0, largest = 0;
  for (const GradUnitSpec& spec : units)
    if (!spec.step_long) {
      per_micro += spec.range.size();
      largest = std::max(largest, spec.range.size());
    }
  const bool all_step_long = slots == 0 || per_micro <= static_cast<size_t>(slots) * largest;
  size_t at = 0;
  for (const GradUnitSpec& spec : units) {
    LOOM_CHECK(spec.range.begin == at && spec.range.end > at);  // ascending, tiling
    at = spec.range.end;
    GradUnit u;
    u.range = spec.range;
    u.step_long = spec.step_long || all_step_long;
    const ShardRange s = shard_range(u.range.size(), parts, rank);
    u.own = {u.range.begin + s.begin, u.range.begin + s.end};
    u.compact = plan.shard_floats;
    plan.shard_floats += u.own.size();
    if (u.step_long) {
      u.dedicated = plan.dedicated_floats;
      plan.dedicated_floats += u.range.size();
    } else {
      plan.slot_floats = std::max(plan.slot_floats, u.range.size());
      // Rank 0's part is the largest (shard_range gives the remainder to the first ranks).
      plan.received_floats =
          std::max(plan.received_floats, shard_range(u.range.size(), parts, 0).size());
    }
    plan.units.push_back(std::move(u));
  }
  if (plan.slot_floats == 0) plan.slots = 0;  // nothing per micro-batch
  return plan;
}

GradWindows grad_windows_create(const GradWindowsPlan& plan, Communicator& comm,
                                const kernels::KernelBackend& backend, float* storage, float* shard,
                                float* received) {
  GradWindows w;
  w.plan = plan;
  w.comm = &comm;
  w.backend = &backend;
  w.storage = storage;
  w.shard = shard;
  w.received = received;
  w.slots.resize(static_cast<size_t>(plan.slots));
  for (GradUnit& u : w.plan.units)
    if (u.step_long) u.window = storage + u.dedicated;
  return w;
}

void grad_windows_begin(GradWindows& w) {
  LOOM_CHECK(w.reducing.empty());  // the previous step finished
  w.backend->zero_bytes(w.storage, w.plan.dedicated_floats * sizeof(float));
  w.backend->zero_bytes(w.shard, w.plan.shard_floats * sizeof(float));
  for (GradUnit& u : w.plan.units) {
    LOOM_CHECK(!u.work && (u.step_long || !u.window));
    u.ready = 0;
  }
  w.last_micro = false;
  w.wait_seconds = 0;
}

float* grad_windows_at(GradWindows& w, size_t offset) {
  GradUnit& u = unit_of(w, offset);
  LOOM_CHECK(!u.work);  // a step-long unit is not written once reported final
  if (!u.window) open_slot(w, u, static_cast<int>(&u - w.plan.units.data()));
  return u.window + (offset - u.range.begin);
}

bool grad_windows_reduces_now(const GradWindows& w, const ShardRange& range) {
  bool step_long = false, open = false;
  for (const GradUnit& u : w.plan.units)
    if (u.range.begin < range.end && range.begin < u.range.end) {
      step_long |= u.step_long;
      open |= u.window != nullptr;
    }
  return step_long ? w.last_micro : open;
}

void grad_windows_ready(GradWindows& w, size_t offset, size_t count) {
  for (size_t at = offset; at < offset + count;) {
    GradUnit& u = unit_of(w, at);
    const size_t end = std::min(offset + count, u.range.end);
    if (u.step_long) {
      if (w.last_micro) {
        u.ready += end - at;
        LOOM_CHECK(u.ready <= u.range.size());  // each gradient reported once
        if (u.ready == u.range.size()) launch_step_long(w, u);
      }
    } else if (u.window) {
      LOOM_CHECK(at == u.range.begin && end == u.range.end);  // reported whole
      launch_slot(w, u);
    }
    at = end;
  }
}

void grad_windows_finish(GradWindows& w) {
  std::exception_ptr first;
  const auto start = Clock::now();
  for (GradUnit& u : w.plan.units) {
    LOOM_CHECK(u.step_long ? u.ready == u.range.size() : !u.window);  // every unit reported
    try {
      if (u.work) u.work->wait();
    } catch (const CommError&) {
      if (!first) first = std::current_exception();
    }
    u.work.reset();
  }
  w.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  while (!w.reducing.empty()) {
    try {
      retire_oldest(w);
    } catch (const CommError&) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

std::vector<ShardRange> grad_windows_owned(const GradWindowsPlan& plan) {
  std::vector<ShardRange> owned;
  for (const GradUnit& u : plan.units) owned.push_back(u.own);
  return owned;
}

void grad_windows_gather_in_place(GradWindows& w, float* params) {
  std::vector<WorkPtr> works;
  for (const GradUnit& u : w.plan.units)
    works.push_back(w.comm->all_gather_async(params + u.own.begin, params + u.range.begin,
                                             u.range.size(), DataType::kFloat32));
  std::exception_ptr first;
  for (WorkPtr& work : works) {
    try {
      work->wait();
    } catch (const CommError&) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace loom
