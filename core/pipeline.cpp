#include "core/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "base/error.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/param_shards.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

using Type = PipelineAction::Type;
using Clock = std::chrono::steady_clock;

// A send or receive in flight may hold a buffer beyond the schedule's open receives; two sends
// (one each way) are the most a step keeps before it needs one back.
constexpr int kSendBuffers = 2;
// A posted receive whose sender is this rank itself (a V's turn): no buffer until consumed.
constexpr int kLoopback = -2;

struct Runner {
  Pipeline& pipe;
  Model& model;
  const MicroBatches& batch;
  bool backward;
  const GradsFinalFn& on_grads_final;
  double loss = 0;

  // The rank running the piece after (forward) or before chunk `chunk`'s.
  int peer_of(int chunk, bool forward) const {
    const int piece = model.par.chunks[chunk].piece + (forward ? 1 : -1);
    return stage_plan_rank_of(model.par.stage.plan, piece);
  }
  // This rank's chunk that runs the piece after (forward) or before chunk `chunk`'s.
  int own_chunk_of(int chunk, bool forward) const {
    const int piece = model.par.chunks[chunk].piece + (forward ? 1 : -1);
    for (int c = 0; c < chunks(); ++c)
      if (model.par.chunks[c].piece == piece) return c;
    LOOM_CHECK(false);
  }

  // Blocks on a transfer; the time is exposed pipeline communication. A failure names this
  // stage, the peer and what was being waited for.
  void wait(const WorkPtr& work, const std::string& what) {
    TraceSpan span(pipe.trace, "wait", "p2p_wait");
    const auto start = Clock::now();
    try {
      work->wait();
    } catch (const CommError& e) {
      throw CommError("pipeline stage " + std::to_string(pipe.rank) + " " + what + ": " +
                      e.what());
    }
    pipe.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }

  // The oldest send's buffer, once that send has completed.
  int finish_oldest_send() {
    LOOM_CHECK(!pipe.sending.empty());  // pipeline_create sized the pool for the schedule
    auto [buffer, peer, work] = pipe.sending.front();
    pipe.sending.erase(pipe.sending.begin());
    wait(work, "sending to stage " + std::to_string(peer));
    return buffer;
  }

  // A free boundary buffer; when none is, the oldest send's.
  int take_buffer() {
    if (pipe.free_buffers.empty()) return finish_oldest_send();
    const int buffer = pipe.free_buffers.back();
    pipe.free_buffers.pop_back();
    return buffer;
  }

  size_t count(int chunk, bool at_end) const {
    return model_boundary_count(model, chunk, at_end, batch.B, batch.T);
  }

  int chunks() const { return static_cast<int>(model.par.chunks.size()); }
  size_t receive_index(Type type, int micro, int chunk) const {
    const int kind = type == Type::kRecvForward ? 0 : 1;
    return (static_cast<size_t>(kind) * batch.count + micro) * chunks() + chunk;
  }
  std::pair<int, WorkPtr>& receive_of(Type type, const PipelineAction& a) {
    return pipe.receiving[receive_index(type, a.micro, a.chunk)];
  }
  int& slot_of(const PipelineAction& a) { return pipe.slot_of[a.micro * chunks() + a.chunk]; }

  void post_receive(const PipelineAction& a) {
    const bool forward = a.type == Type::kRecvForward;
    const int source = peer_of(a.chunk, !forward);
    if (source == pipe.rank) {
      receive_of(a.type, a) = {kLoopback, nullptr};
      return;
    }
    const int buffer = take_buffer();
    WorkPtr work = pipe.pp->recv_async(model_boundary(model, buffer, batch.B, batch.T),
                                       count(a.chunk, !forward),
                                       activation_data_type(*model.buf.backend), source);
    receive_of(a.type, a) = {buffer, std::move(work)};
  }

  int received(Type type, const PipelineAction& a) {
    std::pair<int, WorkPtr>& entry = receive_of(type, a);
    LOOM_CHECK(entry.first != -1);   // the schedule posts every receive first
    if (entry.first == kLoopback) {  // sent earlier by this rank
      int& sent = pipe.loopback[receive_index(type, a.micro, a.chunk)];
      LOOM_CHECK(sent >= 0);
      entry = {-1, nullptr};
      return std::exchange(sent, -1);
    }
    const int buffer = entry.first;
    const WorkPtr work = std::move(entry.second);
    entry = {-1, nullptr};
    const bool forward = type == Type::kRecvForward;
    wait(work, std::string("waiting for micro-batch ") + std::to_string(a.micro) +
                   (forward ? "'s activations from stage " : "'s gradients from stage ") +
                   std::to_string(peer_of(a.chunk, !forward)));
    return buffer;
  }

  // Compute `a`'s output (forward) or input gradient to the neighbouring piece.
  void send(int buffer, const PipelineAction& a, bool forward) {
    const int peer = peer_of(a.chunk, forward);
    if (peer == pipe.rank) {  // a V's turn
      const Type type = forward ? Type::kRecvForward : Type::kRecvBackward;
      pipe.loopback[receive_index(type, a.micro, own_chunk_of(a.chunk, forward))] = buffer;
      return;
    }
    const size_t count = this->count(a.chunk, forward);
    pipe.sending.push_back(
        {buffer, peer,
         pipe.pp->send_async(model_boundary(model, buffer, batch.B, batch.T), count,
                             activation_data_type(*model.buf.backend), peer)});
  }

  int take_slot(const PipelineAction& a) {
    LOOM_CHECK(!pipe.free_slots.empty());  // sized by the schedule's activations in flight
    const int slot = pipe.free_slots.back();
    pipe.free_slots.pop_back();
    slot_of(a) = slot;
    pipe.slots_peak = std::max(pipe.slots_peak, ++pipe.slots_held);
    return slot;
  }

  void give_slot(const PipelineAction& a) {
    pipe.free_slots.push_back(slot_of(a));
    slot_of(a) = -1;
    --pipe.slots_held;
  }

  void forward(const PipelineAction& a) {
    const ModelChunk& c = model.par.chunks[a.chunk];
    const int buffer = c.first ? take_buffer() : received(Type::kRecvForward, a);
    const int slot = take_slot(a);
    const size_t tokens = static_cast<size_t>(a.micro) * batch.B * batch.T;
    flight_phase(pipe.flight, "forward", a.micro, a.chunk);
    {
      TraceSpan span(pipe.trace, "F", "forward", a.micro, a.chunk);
      loss += model_forward_chunk(model, a.chunk, slot, buffer, batch.inputs + tokens,
                                  batch.targets ? batch.targets + tokens : nullptr, batch.B,
                                  batch.T, batch.loss_grad_scale);
    }
    if (!backward) give_slot(a);
    if (c.last)
      pipe.free_buffers.push_back(buffer);
    else
      send(buffer, a, true);
  }

  void backward_of(const PipelineAction& a) {
    const ModelChunk& c = model.par.chunks[a.chunk];
    const int buffer = c.last ? take_buffer() : received(Type::kRecvBackward, a);
    flight_phase(pipe.flight, pipe.split_backward ? "backward (input gradients)" : "backward",
                 a.micro, a.chunk);
    {
      TraceSpan span(pipe.trace, "B", "backward", a.micro, a.chunk);
      model_backward_chunk(model, a.chunk, slot_of(a), buffer, batch.B,
                           batch.T, final_of(a),
                           pipe.split_backward ? BackwardPart::kInput : BackwardPart::kAll);
    }
    if (!pipe.split_backward) give_slot(a);  // else its weight pass still reads it
    if (c.first)
      pipe.free_buffers.push_back(buffer);
    else
      send(buffer, a, false);
  }

  // The weight-gradient pass of a split backward: no transfer; frees the slot.
  void weights_of(const PipelineAction& a) {
    flight_phase(pipe.flight, "backward (weight gradients)", a.micro, a.chunk);
    {
      TraceSpan span(pipe.trace, "W", "backward", a.micro, a.chunk);
      model_backward_chunk(model, a.chunk, slot_of(a), 0, batch.B,
                           batch.T, final_of(a), BackwardPart::kWeight);
    }
    give_slot(a);
  }

  // Ranges become final in the backward (its weight pass) of the step's last micro-batch; under
  // ZeRO-2 the windows reduce some in every micro-batch's (parallel/grad_windows.h).
  GradsFinalFn final_of(const PipelineAction& a) const {
    const bool last = a.micro == batch.count - 1;
    if (GradWindows* w = model.buf.grad_windows) {
      w->last_micro = last;
      return on_grads_final;
    }
    return last ? on_grads_final : GradsFinalFn{};
  }

  void run(const std::vector<PipelineAction>& actions) {
    const size_t entries = static_cast<size_t>(batch.count) * chunks();
    if (pipe.slot_of.size() < entries) pipe.slot_of.assign(entries, -1);
    if (pipe.receiving.size() < 2 * entries) pipe.receiving.assign(2 * entries, {-1, nullptr});
    if (pipe.loopback.size() < 2 * entries) pipe.loopback.assign(2 * entries, -1);
    for (const PipelineAction& a : actions) switch (a.type) {
        case Type::kRecvForward:
        case Type::kRecvBackward: post_receive(a); break;
        case Type::kForward: forward(a); break;
        case Type::kBackward: backward_of(a); break;
        case Type::kWeight: weights_of(a); break;
      }
    LOOM_CHECK(pipe.slots_held == 0);  // every receive consumed: received() checks each
    while (!pipe.sending.empty()) pipe.free_buffers.push_back(finish_oldest_send());
  }
};

}  // namespace

namespace {

// The most boundary buffers a V's turn (rank p − 1) holds at once: chunk 0's forward outputs not
// yet read by chunk 1's forwards, chunk 1's input gradients not yet read by chunk 0's backwards.
int loopback_peak(const std::vector<PipelineAction>& actions, bool v_shape, int size, int rank) {
  if (!v_shape || rank != size - 1) return 0;
  int held = 0, most = 0;
  for (const PipelineAction& a : actions) {
    const bool first = a.chunk == 0;
    if (a.type == Type::kForward) held += first ? 1 : -1;
    if (a.type == Type::kBackward) held += first ? -1 : 1;
    most = std::max(most, held);
  }
  return most;
}

Pipeline pipeline_with(PipelineKind kind, Communicator* pp, int size, int rank, int m, int v) {
  Pipeline pipe;
  pipe.pp = pp;
  pipe.size = size;
  pipe.rank = rank;
  LOOM_CHECK(!pp || (pp->size() == size && pp->rank() == rank));
  pipe.micro_batches = m;
  pipeline_check(kind, size, m, v);
  pipe.train = pipeline_schedule(kind, size, m, v, rank);
  pipe.kind = kind;
  pipe.split_backward = kind == PipelineKind::kZeroBubbleH1 || kind == PipelineKind::kZeroBubbleV;
  pipe.slots = pipeline_max_in_flight(pipe.train);
  // Evaluation's forward-only schedule opens at most two receives (one compute ahead) and the
  // buffer its compute works in; a V's turn also keeps what it sent itself until consumed.
  const bool v_shape = pipeline_v_shape(kind);
  const int turn = std::max(
      loopback_peak(pipe.train, v_shape, size, rank),
      loopback_peak(pipeline_forward_schedule(size, size, v, rank, v_shape), v_shape, size, rank));
  pipe.boundaries = std::max(pipeline_max_open_receives(pipe.train), 3) + kSendBuffers + turn;
  for (int s = pipe.slots - 1; s >= 0; --s) pipe.free_slots.push_back(s);
  for (int b = pipe.boundaries - 1; b >= 0; --b) pipe.free_buffers.push_back(b);
  return pipe;
}

}  // namespace

Pipeline pipeline_create(const ParallelLayout& layout, Communicator* pp, int rank) {
  return pipeline_with(layout.pipeline, pp, layout.mesh.pp, rank, layout.micro_batches,
                       layout.stages.virtual_stages);
}

Pipeline pipeline_single(int micro_batches) {
  return pipeline_with(PipelineKind::kOneFOneB, nullptr, 1, 0, micro_batches, 1);
}

double pipeline_run(Pipeline& pipe, Model& model, const std::vector<PipelineAction>& actions,
                    const MicroBatches& batch, bool backward, const GradsFinalFn& on_grads_final) {
  LOOM_CHECK(model.plan.slots == pipe.slots && model.plan.boundaries == pipe.boundaries &&
             model.plan.split_backward == pipe.split_backward);
  LOOM_CHECK(pipe.size == 1 || pipe.pp);
  Runner runner{pipe, model, batch, backward, on_grads_final};
  runner.run(actions);
  return runner.loss;
}

ActivationMemory pipeline_activation_memory(const Pipeline& pipe, const Model& model) {
  const double fixed =
      4.0 * (model.plan.shared_floats + model.plan.boundary_floats * model.plan.boundaries);
  return {fixed + 4.0 * model.plan.slot_floats * model.plan.slots,
          fixed + 4.0 * model.plan.slot_floats * pipe.slots_peak};
}

std::vector<std::vector<int>> pipeline_replica_sets(const Model& model) {
  std::vector<std::vector<int>> sets;
  for (int r = 0; r < model.par.stage.plan.pp; ++r)
    for (const ParamTensor& t :
         model_layout(model.spec.config, model.buf.backend, {}, {model.par.stage.plan, r})
             .layout.tensors)
      if (t.pp_holders.size() > 1 &&
          std::find(sets.begin(), sets.end(), t.pp_holders) == sets.end())
        sets.push_back(t.pp_holders);
  std::sort(sets.begin(), sets.end());
  return sets;
}

ReplicaSync replica_sync_create(Model& model, std::vector<ReplicaGroup>& groups) {
  ReplicaSync sync;
  sync.grads = model.buf.grads.data();
  const ParamTensor* prev = nullptr;
  for (const ParamTensor& t : model.layout.tensors) {  // buffer order
    Communicator* comm = nullptr;
    for (ReplicaGroup& g : groups)
      if (t.pp_holders.size() > 1 && g.holders == t.pp_holders) comm = g.comm.get();
    LOOM_CHECK(comm || t.pp_holders.size() < 2);
    // One range per run of tensors of one unique layer (or role) with the same holders.
    if (comm && prev && !sync.ranges.empty() && sync.ranges.back().range.end == t.offset &&
        sync.ranges.back().comm == comm && prev->role == t.role && prev->layer == t.layer)
      sync.ranges.back().range.end = t.offset + t.size;
    else if (comm)
      sync.ranges.push_back({{t.offset, t.offset + t.size}, comm, t.global_index, false, nullptr});
    prev = &t;
  }
  std::sort(sync.ranges.begin(), sync.ranges.end(),
            [](const auto& a, const auto& b) { return a.key > b.key; });
  return sync;
}

void replica_sync_begin(ReplicaSync& sync) {
  for (ReplicaSync::Range& r : sync.ranges) {
    r.ready = false;
    r.work.reset();
  }
  sync.wait_seconds = 0;
}

void replica_sync_ready(ReplicaSync& sync, size_t offset, size_t count,
                        const GradsFinalFn& forward_ready) {
  const size_t end = offset + count;
  std::vector<ShardRange> replicated;  // inside [offset, end), ascending
  for (ReplicaSync::Range& r : sync.ranges)
    if (r.range.begin >= offset && r.range.end <= end) {
      r.ready = true;
      replicated.push_back(r.range);
    }
  std::sort(replicated.begin(), replicated.end(),
            [](const ShardRange& a, const ShardRange& b) { return a.begin < b.begin; });
  // The parts not replicated go on at once.
  size_t at = offset;
  for (const ShardRange& r : replicated) {
    if (r.begin > at && forward_ready) forward_ready(at, r.begin - at);
    at = r.end;
  }
  if (end > at && forward_ready) forward_ready(at, end - at);
  // Each group's sums start in the shared order, as far as their gradients are final.
  for (size_t i = 0; i < sync.ranges.size(); ++i) {
    ReplicaSync::Range& r = sync.ranges[i];
    if (r.work || !r.ready) continue;
    bool blocked = false;  // an earlier range of the same group has not started
    for (size_t j = 0; j < i; ++j) blocked |= sync.ranges[j].comm == r.comm && !sync.ranges[j].work;
    if (blocked) continue;
    // Under ZeRO-2 a replicated range lies in a step-long unit's window (its holders run it at
    // several places of the unrolled list).
    float* grads =
        sync.windows ? grad_windows_at(*sync.windows, r.range.begin) : sync.grads + r.range.begin;
    r.work = r.comm->all_reduce_async(grads, r.range.size(), DataType::kFloat32, ReduceOp::kSum);
  }
}

void replica_sync_finish(ReplicaSync& sync, const GradsFinalFn& forward_ready) {
  TraceSpan span(sync.trace, "replica sum", "replica_reduce");
  const auto start = Clock::now();
  for (ReplicaSync::Range& r : sync.ranges) {
    LOOM_CHECK(r.ready && r.work);  // every replicated gradient was reported, in order
    r.work->wait();
    if (forward_ready) forward_ready(r.range.begin, r.range.size());
  }
  sync.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

void replica_sync_broadcast(ReplicaSync& sync, float* params) {
  TraceSpan span(sync.trace, "replica broadcast", "replica_reduce");
  const auto start = Clock::now();
  std::vector<WorkPtr> works;
  for (const ReplicaSync::Range& r : sync.ranges)  // the shared order; rank 0: the lowest holder
    works.push_back(r.comm->broadcast_async(params + r.range.begin, r.range.size(),
                                            DataType::kFloat32, 0));
  for (WorkPtr& w : works) w->wait();
  sync.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

void replica_sync_broadcast(const ReplicaSync& sync, float* buffer) {
  std::vector<WorkPtr> works;
  for (const ReplicaSync::Range& r : sync.ranges)  // the shared order; rank 0: the lowest holder
    works.push_back(r.comm->broadcast_async(buffer + r.range.begin, r.range.size(),
                                            DataType::kFloat32, 0));
  for (WorkPtr& w : works) w->wait();
}

void pipeline_gather_global(const Model& model, const float* stage_global, Communicator& pp,
                            std::vector<float>& global) {
  if (pp.rank() != 0) {
    pp.send(stage_global, model_global_floats(model), DataType::kFloat32, 0);
    global.clear();
    return;
  }
  const Model whole = model_layout(model.spec.config, model.buf.backend);
  std::vector<size_t> global_offset;  // of each global tensor
  size_t total = 0;
  for (const ParamTensor& t : whole.layout.tensors) {
    global_offset.push_back(total);
    total += tensor_global_size(t);
  }
  global.assign(total, 0.0f);
  std::vector<float> received;
  for (int s = 0; s < pp.size(); ++s) {
    const Model stage =
        model_layout(model.spec.config, model.buf.backend, {}, {model.par.stage.plan, s});
    const float* from = stage_global;
    if (s > 0) {
      received.resize(stage.layout.num_params);  // at tp = 1: the stage's tensors at global size
      pp.recv(received.data(), received.size(), DataType::kFloat32, s);
      from = received.data();
    }
    for (const ParamTensor& t : stage.layout.tensors)
      if (t.pp_holders.front() == s)
        std::copy_n(from + t.offset, t.size, global.data() + global_offset[t.global_index]);
  }
}

}  // namespace loom
