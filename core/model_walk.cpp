// The walk over a range of unrolled positions with its residual schedule (standard or ladder,
// the tensor-parallel sums waited on when first needed), forward and backward, from and to a
// boundary state (core/model.h, docs/architecture.md); core/model.cpp runs it over chunks, and
// core/model_routed.cpp over a routed loop's gathered tokens.
#include <algorithm>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom::model_detail {

// Where sub-layer i of chunk c keeps its activations while it runs from slot `slot`: in the slot
// for a kept segment, else in the shared workspace at its place within its unit — except, with
// a split backward, its output gradients, which the weight pass reads after the workspace has
// been reused: those stay in the slot.
SublayerActs acts_of(const Model& m, const ModelChunk& c, int slot, int i) {
  const int p = i / 2 - c.begin;
  if (c.segments[c.segment_of[p]].kind == ChunkSegment::kKept)
    return acts_in_slot(m, c.acts[i - 2 * c.begin], slot);
  SublayerActs a = m.plan.work_acts[i - 2 * c.unit_of[p]];
  if (m.plan.split_backward) {
    const SublayerActs kept = acts_in_slot(m, c.acts[i - 2 * c.begin], slot);
    a.d_out = kept.d_out;
    a.d_mid = kept.d_mid;
  }
  return a;
}

// Pending output h_j of the boundary state at position p's start, inside a checkpoint of it.
void* checkpoint_tensor(const Model& m, void* checkpoint, int p, int j, size_t NC) {
  return act_offset(m, checkpoint, (j - 2 * p + m.spec.delay) * NC);
}

void* output_partial(Model& m, const BoundaryState& state, int i, size_t n) {
  if (!m.par.tp.sequence) return state.pending(i);
  return act_offset(m, act(m, m.temps.partial), (i % m.spec.delay) * n);
}

WorkPtr output_sum_start(Model& m, const BoundaryState& state, int i, size_t n) {
  return tp_complete_start(m.par.tp, output_partial(m, state, i, n), state.pending(i), n);
}

void forward_walk(Model& m, const BoundaryState& state, const Walk& w) {
  const kernels::KernelBackend& be = kb(m);
  const int d = m.spec.delay, s = 2 * w.begin, e = 2 * w.end;
  const size_t NC = state.NC;                                     // this rank's rows of the stream
  const size_t full = static_cast<size_t>(w.B) * w.T * m.spec.C;  // a sub-layer's output
  void* r = state.stream();
  const int injection = injection_sublayer(m);
  // Checkpointed pending outputs, copied once their sum completes (by pending slot).
  void* keep_pending[2] = {nullptr, nullptr};
  auto pending_output = [&](int sublayer) {  // h_j, complete: its tensor-parallel sum arrived
    tp_wait(m, m.par.tp_sums.forward[sublayer % d]);
    return state.pending(sublayer);
  };
  for (int i = s; i < e; ++i) {
    const int p = i / 2, sub = i % 2;
    // Ladder: h_{i−2} is waited on here, after h_{i−1}'s all-reduce was started, so each
    // all-reduce runs while the next sub-layer computes. At the walk's start the boundary state
    // has it added.
    if (i >= d && i != s) {
      void* h = pending_output(i - d);
      be.vector_add(r, h, NC);
      if (void*& to = keep_pending[(i - d) % d]) {
        be.copy(to, h, NC);
        to = nullptr;
      }
    }
    if (sub == 0) {
      if (void* kept = w.checkpoint ? w.checkpoint(p) : nullptr) {
        be.copy(kept, r, NC);
        for (int j = std::max(0, i - d + 1); j < i; ++j)  // complete at sub-layer j + d
          keep_pending[j % d] = checkpoint_tensor(m, kept, p, j, NC);
      }
      if (w.loop_stats) loop_stats_state(m, p, r, nullptr, w.begin, w.end, NC);
      if (m.spec.config.input_injection() && p != m.spec.loop_begin && starts_loop_iteration(m, p))
        be.vector_add(r, state.injected(), NC);
    }
    if (i == injection) be.copy(state.injected(), r, NC);
    const SublayerActs a = w.acts(i);
    be.copy(act(m, a.input), r, NC);
    // Slot i % d held h_{i−d}, just added to r: free for h_i.
    const LayerOffsets o = layer_at(m, p);
    void* h = output_partial(m, state, i, full);
    if (sub == 0)
      attention_sublayer_forward(m, o, a, w.B, w.T, h, w.routed, i);
    else
      mlp_sublayer_forward(m, o, a, w.B, w.T, h);
    if (w.end_as != WalkEnd::kDiscard || i < e - d)
      m.par.tp_sums.forward[i % d] = output_sum_start(m, state, i, full);
  }
  if (w.end_as == WalkEnd::kOpen && w.loop_stats)  // as the boundary below would hold it
    loop_stats_state(m, w.end, r, pending_output(e - d), w.begin, w.end, NC);
  if (w.end_as != WalkEnd::kBoundary) return;
  // The boundary state: h_{e−d} added (as sub-layer e would), the rest complete.
  be.vector_add(r, pending_output(e - d), NC);
  for (int j = e - d + 1; j < e; ++j) pending_output(j);
  if (w.loop_stats) loop_stats_state(m, w.end, r, nullptr, w.begin, w.end, NC);
}

// Backward of positions [a, b) of the chunk, whose activations `acts` gives, from the gradient
// of the state at b in run.grad_state to that of the state at a. Sub-layer i's output h_i
// joined the stream right before sub-layer i + d, so its gradient is dr once sub-layer i + d is
// finished; for i + d ≥ 2b that was done before (a later segment, or the next chunk, whose
// gradient arrived in the boundary). Sub-layer i's own input-gradient all-reduce is started after
// its compute and waited on only when sub-layer i − d begins: with the ladder (d = 2) it runs
// during sub-layer i − 1's backward. Sub-layers below 2a are earlier: their output gradients are
// left in the state, with dr.
void backward_range(BackwardRun& run, int a, int b, const std::function<SublayerActs(int)>& acts) {
  Model& m = run.m;
  const ModelChunk& c = run.c;
  const kernels::KernelBackend& be = kb(m);
  const int d = m.spec.delay, s = 2 * a, e = 2 * b;
  const BoundaryState& gs = run.grad_state;
  const size_t NC = gs.NC, full = static_cast<size_t>(run.B) * run.T * m.spec.C;
  const int rows = static_cast<int>(model_stream_rows(m, run.B, run.T));
  void* dr = gs.stream();
  void* de = gs.injected();
  // A pre-norm's output gradient, complete (this rank's rows), and the partial sum a sub-layer's
  // backward leaves (all rows; the same place unless sequence parallelism reduce-scatters it).
  auto d_normed_slot = [&](int sublayer) {
    return act_offset(m, act(m, m.temps.d_normed), (sublayer % d) * NC);
  };
  auto d_partial_slot = [&](int sublayer) {
    return m.par.tp.sequence ? act_offset(m, act(m, m.temps.d_partial), (sublayer % d) * full)
                             : d_normed_slot(sublayer);
  };
  if (b == c.end && c.last)  // reverse of the forward's final additions: every pending output
    for (int j = std::max(0, e - d); j < e; ++j) be.copy(gs.pending(j), dr, NC);
  else  // the gradient of the stream, h_{e−d} included: its gradient is dr
    be.copy(gs.pending(e - d), dr, NC);
  const int injection = injection_sublayer(m);

  // Completes sub-layer j's backward: waits for its input gradient's tensor-parallel sum, runs
  // its pre-norm's backward into dr — which then is the gradient of the stream as sub-layer j
  // read it — and reverses what the forward did to the stream right before sub-layer j.
  auto finish = [&](int j) {
    const int p = j / 2;
    const LayerOffsets o = layer_at(m, p);
    const SublayerActs act_j = acts(j);
    tp_wait(m, m.par.tp_sums.backward[j % d]);
    if (j % 2 == 0)
      norm_backward(m, o.norm1_w, o.norm1_b, act_j, rows, d_normed_slot(j), dr);
    else
      norm_backward(m, o.norm2_w, o.norm2_b, act_j, rows, d_normed_slot(j), dr);
    if (j == injection) be.vector_add(dr, de, NC);  // reverse of e = r
    if (j % 2 != 0) return;
    if (m.spec.config.input_injection() && p != m.spec.loop_begin && starts_loop_iteration(m, p))
      be.vector_add(de, dr, NC);  // reverse of r += e
    loop_stats_grad(m, p, dr, NC);
    const int u = m.spec.unrolled[p];
    // A unique layer's gradients are final after the backward of its first application here.
    if (m.par.first_use[u] == p) run.report(m.layout.layer_ranges[u]);
  };

  for (int i = e - 1; i >= s - d; --i) {
    if (i + d < e) finish(i + d);
    if (i < 0) continue;
    if (i + d < e) be.copy(gs.pending(i), dr, NC);
    if (i < s) continue;
    const LayerOffsets o = layer_at(m, i / 2);
    const SublayerActs act_i = acts(i);
    if (i % 2 == 0)
      attention_sublayer_backward(m, o, act_i, run.B, run.T, gs.pending(i), d_partial_slot(i),
                                  run.defer, run.routed, i);
    else
      mlp_sublayer_backward(m, o, act_i, run.B, run.T, gs.pending(i), d_partial_slot(i), run.defer);
    m.par.tp_sums.backward[i % d] =
        tp_complete_start(m.par.tp, d_partial_slot(i), d_normed_slot(i), full);
  }
}

}  // namespace loom::model_detail
