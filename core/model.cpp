// The walk over a chunk of the unrolled list with its residual schedule (standard or ladder, the
// tensor-parallel sums waited on when first needed), forward and backward, from and to a
// boundary state (core/model.h, docs/architecture.md).
#include "core/model.h"

#include <algorithm>
#include <functional>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom {
namespace {

using namespace model_detail;

void check_run(Model& m, int chunk, int slot, int B, int T) {
  LOOM_CHECK(B <= m.plan.B && T <= m.plan.T);
  LOOM_CHECK(chunk >= 0 && chunk < static_cast<int>(m.par.chunks.size()));
  LOOM_CHECK(slot >= 0 && slot < m.plan.slots);
  LOOM_CHECK(m.par.tp.size == 1 || m.par.tp.comm);
  LOOM_CHECK(m.par.sp.size == 1 || m.par.sp.comm);  // a layout-only model (planning) does not run
  // On the CPU the attention scratch is per thread: the thread count must not have grown.
  LOOM_CHECK((m.par.sp.comm
                  ? kb(m).attention_block_scratch_bytes(m.plan.B, m.par.Hl, m.plan.T, m.plan.T)
                  : kb(m).attention_scratch_bytes(m.plan.B, m.plan.T, m.par.Cl, m.par.Hl)) <=
             m.plan.attention_scratch_bytes);
  LOOM_CHECK(!m.par.sp.comm || T == m.plan.T);  // the positions are planned for plan.T rows
  LOOM_CHECK(!m.par.tp.sequence || B * T % m.par.tp.size == 0);  // whole rows per tp rank
}

// This rank's rows of the stream among N (all of them, or with sequence parallelism N / tp),
// and the first of them.
int stream_rows_of(const Model& m, int N) { return m.par.tp.sequence ? N / m.par.tp.size : N; }
size_t own_first_row(const Model& m, int N) {
  return static_cast<size_t>(stream_rows_of(m, N)) * (m.par.tp.sequence ? m.par.tp.rank : 0);
}

// The final norm and the LM head with cross-entropy over the last chunk's stream; returns the
// sum of the token losses. With sequence parallelism the norm runs on this rank's rows, in
// their place among all N, and the head reads every rank's, gathered.
double head_forward(Model& m, const ModelChunk& c, int slot, const int* targets, int N,
                    float loss_grad_scale) {
  const kernels::KernelBackend& be = kb(m);
  const size_t base = slot_base(m, slot), C = m.spec.C;
  const int rows = stream_rows_of(m, N);
  const void* x = act(m, base + c.final_input);
  void* normed = act_offset(m, act(m, m.temps.normed_f), own_first_row(m, N) * C);
  if (is_layernorm(m))
    be.layernorm_forward(normed, stat(m, base + c.mean_f), stat(m, base + c.rstd_f), x,
                         weight(m, m.layout.norm_f_w), weight(m, m.layout.norm_f_b), rows, m.spec.C,
                         m.spec.config.norm_eps());
  else
    be.rmsnorm_forward(normed, stat(m, base + c.rstd_f), x, weight(m, m.layout.norm_f_w), rows,
                       m.spec.C, m.spec.config.norm_eps());
  GatheredRows all = gather_rows_start(m, normed, m.temps.normed_f, static_cast<size_t>(N) * C);
  gathered_rows(m, all);
  if (!targets) return 0.0;
  m.buf.targets.upload(targets, N);
  targets = m.buf.targets.data();
  const bool want_grad = loss_grad_scale > 0.0f;
  void* d_normed_f = want_grad ? act(m, base + c.d_normed_f) : nullptr;
  const int chunk = std::min<int>(m.spec.config.lm_head_chunk(), N);
  if (m.par.tp.comm)  // vocabulary-parallel: full-vocabulary logits never exist on one rank
    return vocab_parallel_cross_entropy(
        be, *m.par.tp.comm, d_normed_f, want_grad ? lm_head_grad(m) : nullptr,
        act(m, m.temps.normed_f), lm_head_weight(m), targets, N, m.spec.C, m.par.vocab,
        loss_grad_scale, act(m, m.temps.lm_head_scratch), chunk, &m.par.tp_sums.wait_seconds);
  return be.lm_head_cross_entropy(d_normed_f, want_grad ? lm_head_grad(m) : nullptr,
                                  act(m, m.temps.normed_f), lm_head_weight(m), targets, N, m.spec.C,
                                  m.spec.V, loss_grad_scale, act(m, m.temps.lm_head_scratch),
                                  chunk);
}

// The learned position rows the embedding adds to this rank's T tokens (tp rank 0 only; null
// otherwise or for rotary models): wpe itself, or with sp > 1 its rows at the rank's positions.
const void* position_rows(Model& m, int T) {
  if (is_rotary(m) || !row_parallel_bias(m, m.layout.wpe)) return nullptr;
  if (!m.par.sp.comm) return weight(m, m.layout.wpe);
  for (int t = 0; t < T; ++t)
    kb(m).copy(act_offset(m, act(m, m.temps.wpe_local), static_cast<size_t>(t) * m.spec.C),
               act_offset(m, weight(m, m.layout.wpe),
                          static_cast<size_t>(m.temps.positions[t]) * m.spec.C),
               m.spec.C);
  return act(m, m.temps.wpe_local);
}

// The embedding's backward: the token rows' gradients, and the position rows' (with sp > 1
// computed for the local rows, then added to wpe's gradient at their positions), from the
// stream's gradient (this rank's rows under sequence parallelism: every rank's gathered first).
void embedding_backward(Model& m, const void* dr, const int* tokens, int B, int T) {
  GatheredRows all =
      gather_rows_start(m, dr, m.temps.gathered_grad, static_cast<size_t>(B) * T * m.spec.C);
  dr = gathered_rows(m, all);
  float* dwpe = is_rotary(m) ? nullptr : grad(m, m.layout.wpe);
  if (dwpe && m.par.sp.comm) {
    dwpe = stat(m, m.temps.dwpe_local);
    kb(m).zero_bytes(dwpe, static_cast<size_t>(T) * m.spec.C * sizeof(float));
  }
  kb(m).embedding_backward(grad(m, m.layout.wte), dwpe, dr, tokens, B, T, m.spec.C,
                           m.par.vocab.vocab_begin, m.par.vocab.rows,
                           act(m, m.temps.embedding_scratch));
  if (!dwpe || !m.par.sp.comm) return;
  for (int t = 0; t < T; ++t)
    kb(m).accumulate(grad(m, m.layout.wpe) + static_cast<size_t>(m.temps.positions[t]) * m.spec.C,
                     dwpe + static_cast<size_t>(t) * m.spec.C, m.spec.C);
}

}  // namespace

double model_forward_chunk(Model& m, int chunk, int slot, int boundary, const int* inputs,
                           const int* targets, int B, int T, float loss_grad_scale) {
  check_run(m, chunk, slot, B, T);
  tp_drain(m.par.tp_sums);
  const ModelChunk& c = m.par.chunks[chunk];
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T, d = m.spec.delay;
  const BoundaryState state = model_boundary_state(m, boundary, B, T);
  // A recomputed last segment leaves its last unit in the workspace, ready for backward.
  const bool leaves_work = c.segments.back().kind == ChunkSegment::kRecomputed;
  m.plan.work_slot = m.plan.work_chunk = -1;
  const size_t NC = state.NC, base = slot_base(m, slot);
  void* r = state.stream();
  if (c.first) {
    // Tokens go up once per micro-batch; backward reads them from the slot.
    int* tokens = m.buf.slot_tokens.data() + static_cast<size_t>(slot) * m.plan.B * m.plan.T;
    m.buf.slot_tokens.upload(inputs, N, static_cast<size_t>(slot) * m.plan.B * m.plan.T);
    // Each rank looks up its vocabulary rows (zeros for the others); tp rank 0 adds positions.
    // With sequence parallelism that partial sum is reduce-scattered into the stream's rows.
    void* embedded = m.par.tp.sequence ? act(m, m.temps.partial) : r;
    be.embedding_forward(embedded, tokens, weight(m, m.layout.wte), position_rows(m, T), B, T,
                         m.spec.C, m.par.vocab.vocab_begin, m.par.vocab.rows);
    WorkPtr sum = tp_complete_start(m.par.tp, embedded, r, static_cast<size_t>(N) * m.spec.C);
    tp_wait(m, sum);
  }
  Walk w{c.begin, c.end, B, T, [&](int i) { return acts_of(m, c, slot, i); },
         [&](int p) -> void* {
           const ChunkSegment& g = c.segments[c.segment_of[p - c.begin]];
           return g.kind == ChunkSegment::kRecomputed && g.begin == p ? act(m, base + g.checkpoint)
                                                                      : nullptr;
         },
         c.last ? WalkEnd::kOpen : WalkEnd::kBoundary};
  w.loop_stats = m.passes.loops.on;
  const bool routed = model_routed(m.spec.config);
  if (routed)  // every output added: no pending one is left for the head
    routed_forward(m, c, slot, state, B, T, loss_grad_scale);
  else
    forward_walk(m, state, w);
  if (leaves_work) {
    m.plan.work_slot = slot;
    m.plan.work_chunk = chunk;
  }
  if (c.keeps_injected) be.copy(act(m, base + c.injected_kept), state.injected(), NC);
  if (!c.last) return 0.0;
  const int e = 2 * c.end;
  for (int j = std::max(0, e - d); j < e && !routed; ++j) {
    tp_wait(m, m.par.tp_sums.forward[j % d]);
    be.vector_add(r, state.pending(j), NC);
  }
  be.copy(act(m, base + c.final_input), r, NC);
  return head_forward(m, c, slot, targets, N, loss_grad_scale) / N;
}

namespace {

// Copies the boundary state at position p kept in `checkpoint` into `live`.
void restore(Model& m, const void* checkpoint, int p, const BoundaryState& live) {
  const kernels::KernelBackend& be = kb(m);
  be.copy(live.stream(), checkpoint, live.NC);
  for (int j = std::max(0, 2 * p - m.spec.delay + 1); j < 2 * p; ++j)
    be.copy(live.pending(j), checkpoint_tensor(m, const_cast<void*>(checkpoint), p, j, live.NC),
            live.NC);
}

// Recomputed segment g of chunk c, run forward again from the state slot `slot` kept, one unit
// at a time through the workspace, last unit first; `then(begin, end)` runs right after each
// unit's forward, while its activations are there. With several units (kSqrt) the segment runs
// first to keep each unit's start state. With `last_in_work` the forward's own activations of
// the last unit are still in the workspace, so that unit is not run again.
void recompute_units(Model& m, const ModelChunk& c, int chunk, int slot, int B, int T,
                     const ChunkSegment& g, bool last_in_work,
                     const std::function<void(int, int)>& then) {
  auto work = [&m, &c, slot](int i) { return acts_of(m, c, slot, i); };
  const int units = static_cast<int>(g.units.size());
  if (last_in_work) then(g.units.back(), g.end);
  const int top = units - 1 - (last_in_work ? 1 : 0);  // the last unit still to recompute
  if (top < 0) return;
  TraceSpan span(m.par.trace, "R", "recompute", -1, chunk);
  const size_t NC = model_stream_rows(m, B, T) * m.spec.C;
  const BoundaryState live{act(m, m.plan.recompute_state), NC, m.spec.delay,
                           kb(m).activation_bytes()};
  restore(m, act(m, slot_base(m, slot) + g.checkpoint), g.begin, live);
  if (boundary_carries_injected(m, 2 * g.begin))
    kb(m).copy(live.injected(), act(m, slot_base(m, slot) + c.injected_kept), live.NC);
  auto inner = [&m](int k) {
    return act(m, m.plan.inner_checkpoints + k * m.plan.checkpoint_floats);
  };
  // This rank's share of the re-run positions' model FLOPs: its B·T tokens of sequences
  // sp·T long, its 1/tp of each layer.
  auto count = [&m, B, T](int begin, int end) {
    for (int p = begin; p < end; ++p)
      m.passes.recompute_flops += static_cast<double>(B) * T *
                                  position_model_flops(m, p, T * m.par.sp.size) / m.par.tp.size;
  };
  if (top > 0) count(g.begin, g.units[top]);
  if (top > 0)  // up to unit top's start, which `live` then holds
    forward_walk(m, live,
                 {g.begin, g.units[top], B, T, work,
                  [&](int p) -> void* {
                    const auto at = std::find(g.units.begin(), g.units.end(), p);
                    return at == g.units.end() ? nullptr : inner(at - g.units.begin());
                  },
                  WalkEnd::kBoundary});
  for (int k = top; k >= 0; --k) {
    const int begin = g.units[k], end = k + 1 < units ? g.units[k + 1] : g.end;
    if (k < top) restore(m, inner(k), begin, live);
    count(begin, end);
    forward_walk(m, live, {begin, end, B, T, work, {}, WalkEnd::kDiscard});
    then(begin, end);
  }
}

// A recomputed segment's backward: each unit's forward again (recompute_units), then its
// backward.
void recompute_backward(BackwardRun& run, int chunk, const ChunkSegment& g, bool last_in_work) {
  Model& m = run.m;
  const ModelChunk& c = run.c;
  const int slot = run.slot;
  recompute_units(m, c, chunk, slot, run.B, run.T, g, last_in_work, [&](int begin, int end) {
    backward_range(run, begin, end, [&m, &c, slot](int i) { return acts_of(m, c, slot, i); });
  });
}

// Reports `r` final to on_grads_final (when given: the step's last micro-batch, or under ZeRO-2
// every micro-batch). With sequence
// parallelism each rank's norm weights' gradients hold only its rows' part: those in `r` are
// summed over the tensor-parallel group first (every rank reports the same ranges in the same
// order), after which every rank holds the same, as for any replicated tensor.
void report_final(Model& m, const GradsFinalFn& on_grads_final, const ShardRange& r) {
  if (!on_grads_final || r.size() == 0) return;
  // ZeRO-2 reports every micro-batch: only what its windows reduce now is final.
  if (m.buf.grad_windows && !grad_windows_reduces_now(*m.buf.grad_windows, r)) return;
  if (m.par.tp.sequence) {
    std::vector<size_t> norms;
    auto add = [&](size_t offset) {
      if (offset != kNoTensor && offset >= r.begin && offset + m.spec.C <= r.end)
        norms.push_back(offset);
    };
    if (m.layout.head_range.size() > 0) {
      add(m.layout.norm_f_w);
      add(m.layout.norm_f_b);
    }
    for (size_t u = 0; u < m.layout.layers.size(); ++u) {
      if (m.layout.layer_ranges[u].size() == 0) continue;  // not held: its offsets are unused
      const LayerOffsets& o = m.layout.layers[u];
      for (size_t offset : {o.norm1_w, o.norm1_b, o.norm2_w, o.norm2_b}) add(offset);
    }
    std::sort(norms.begin(), norms.end());
    LOOM_CHECK(std::adjacent_find(norms.begin(), norms.end()) == norms.end());  // summed once
    std::vector<WorkPtr> sums;
    for (size_t offset : norms)
      sums.push_back(m.par.tp.comm->all_reduce_async(grad(m, offset), m.spec.C, DataType::kFloat32,
                                                     ReduceOp::kSum));
    for (WorkPtr& w : sums) tp_wait(m, w);
  }
  on_grads_final(r.begin, r.size());
}

// The weight pass of a split backward: the matrices' gradients from the output gradients the
// input pass kept, sub-layer by sub-layer in the same order; each range reported once final. A
// recomputed segment runs forward once more, unit by unit, for the activations the gradients
// need (the slot kept the output gradients, not them).
void backward_weights(Model& m, int chunk, int slot, int B, int T,
                      const GradsFinalFn& on_grads_final) {
  const ModelChunk& c = m.par.chunks[chunk];
  const int N = B * T;
  auto report = [&](const ShardRange& r) { report_final(m, on_grads_final, r); };
  if (c.last) {
    report(m.layout.head_range);
    if (m.layout.has_wte && m.par.chunks.front().begin != 0) report(m.layout.embedding_range);
  }
  auto weights = [&](int i, const SublayerActs& a) {
    const int p = i / 2, u = m.spec.unrolled[p];
    if (i % 2 == 0) {
      attention_sublayer_weights(m, m.layout.layers[u], a, N);
      if (m.par.first_use[u] == p) report(m.layout.layer_ranges[u]);
    } else {
      mlp_sublayer_weights(m, m.layout.layers[u], a, N);
    }
  };
  tp_drain(m.par.tp_sums);
  for (auto g = c.segments.rbegin(); g != c.segments.rend(); ++g) {
    LOOM_CHECK(g->kind != ChunkSegment::kNoGrad);  // validate_config: no backprop_loops here
    if (g->kind == ChunkSegment::kKept) {
      for (int i = 2 * g->end - 1; i >= 2 * g->begin; --i)
        weights(i, acts_in_slot(m, c.acts[i - 2 * c.begin], slot));
      continue;
    }
    m.plan.work_slot = m.plan.work_chunk = -1;  // the workspace is reused from here
    recompute_units(m, c, chunk, slot, B, T, *g, false, [&](int begin, int end) {
      for (int i = 2 * end - 1; i >= 2 * begin; --i) weights(i, acts_of(m, c, slot, i));
    });
  }
  if (c.first) report(m.layout.embedding_range);
}

// Iterations before model.backprop_loops' cut: their final state is a constant, so the state at
// their start gets no gradient through them — except through e where they take it (the
// injection sub-layer: e = r there, so e's gradient flows on into the stream and the output
// still pending). Their layers' ranges are reported here if no later position used them.
void no_grad_backward(BackwardRun& run, const ChunkSegment& g) {
  Model& m = run.m;
  const kernels::KernelBackend& be = kb(m);
  const BoundaryState& gs = run.grad_state;
  const int injection = injection_sublayer(m);
  if (injection >= 2 * g.begin && injection < 2 * g.end)
    be.copy(gs.stream(), gs.injected(), gs.NC);
  else
    be.zero(gs.stream(), gs.NC);
  for (int j = std::max(0, 2 * g.begin - m.spec.delay + 1); j < 2 * g.begin; ++j)
    be.copy(gs.pending(j), gs.stream(), gs.NC);
  for (int p = g.end - 1; p >= g.begin; --p)
    if (m.par.first_use[m.spec.unrolled[p]] == p)
      run.report(m.layout.layer_ranges[m.spec.unrolled[p]]);
}

}  // namespace

std::vector<GradUnitSpec> model_grad_units(const Model& m) {
  std::vector<int> positions(m.layout.layer_ranges.size(), 0);
  for (int u : m.spec.unrolled) ++positions[static_cast<size_t>(u)];
  std::vector<GradUnitSpec> units;
  if (m.layout.embedding_range.size() > 0) units.push_back({m.layout.embedding_range, true});
  if (m.layout.head_range.size() > 0) units.push_back({m.layout.head_range, true});
  for (size_t u = 0; u < m.layout.layer_ranges.size(); ++u)
    if (m.layout.layer_ranges[u].size() > 0)
      units.push_back({m.layout.layer_ranges[u], positions[u] > 1});
  std::sort(units.begin(), units.end(), [](const GradUnitSpec& a, const GradUnitSpec& b) {
    return a.range.begin < b.range.begin;
  });
  return units;
}

void model_backward_chunk(Model& m, int chunk, int slot, int boundary, int B, int T,
                          const GradsFinalFn& on_grads_final, BackwardPart part) {
  check_run(m, chunk, slot, B, T);
  LOOM_CHECK(part == BackwardPart::kAll || m.plan.split_backward);
  if (part == BackwardPart::kWeight) return backward_weights(m, chunk, slot, B, T, on_grads_final);
  tp_drain(m.par.tp_sums);
  const ModelChunk& c = m.par.chunks[chunk];
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T;
  const bool defer = part == BackwardPart::kInput;  // the weight pass reports the ranges
  BackwardRun run{
      m, c, slot, B, T, model_boundary_state(m, boundary, B, T), defer, [&](const ShardRange& r) {
        if (!defer) report_final(m, on_grads_final, r);
      }};
  const size_t NC = run.grad_state.NC, base = slot_base(m, slot);
  void* dr = run.grad_state.stream();
  if (m.spec.config.input_injection() && !c.injected_out) be.zero(run.grad_state.injected(), NC);
  if (c.last) {
    be.zero(dr, NC);
    const void* x = act(m, base + c.final_input);
    // Complete on every rank, all rows: this rank's.
    const void* d_normed_f =
        act_offset(m, act(m, base + c.d_normed_f), own_first_row(m, N) * m.spec.C);
    const int rows = static_cast<int>(model_stream_rows(m, B, T));
    if (is_layernorm(m))
      be.layernorm_backward(dr, grad(m, m.layout.norm_f_w), grad(m, m.layout.norm_f_b), d_normed_f,
                            x, weight(m, m.layout.norm_f_w), stat(m, base + c.mean_f),
                            stat(m, base + c.rstd_f), rows, m.spec.C, act(m, m.temps.norm_scratch));
    else
      be.rmsnorm_backward(dr, grad(m, m.layout.norm_f_w), d_normed_f, x,
                          weight(m, m.layout.norm_f_w), stat(m, base + c.rstd_f), rows, m.spec.C,
                          act(m, m.temps.norm_scratch));
    // The final norm and the untied LM head (its gradient came from the forward) are done; so
    // is a tied embedding held here only as the head (its look-up runs on another rank).
    run.report(m.layout.head_range);
    if (m.layout.has_wte && m.par.chunks.front().begin != 0) run.report(m.layout.embedding_range);
  }
  bool last_in_work = m.plan.work_slot == slot && m.plan.work_chunk == chunk;
  m.plan.work_slot = m.plan.work_chunk = -1;
  if (model_routed(m.spec.config))  // one segment of kept activations, walked its own way
    routed_backward(run);
  else
    for (auto g = c.segments.rbegin(); g != c.segments.rend(); ++g) switch (g->kind) {
      case ChunkSegment::kKept:
        backward_range(run, g->begin, g->end,
                       [&m, &c, slot](int i) { return acts_of(m, c, slot, i); });
        break;
      case ChunkSegment::kRecomputed:
        recompute_backward(run, chunk, *g, last_in_work);
        last_in_work = false;  // only the chunk's last segment
        break;
      case ChunkSegment::kNoGrad: no_grad_backward(run, *g); break;
    }
  if (!c.first) return;
  const int* tokens = m.buf.slot_tokens.data() + static_cast<size_t>(slot) * m.plan.B * m.plan.T;
  embedding_backward(m, dr, tokens, B, T);
  run.report(m.layout.embedding_range);
}

double model_forward(Model& m, const int* inputs, const int* targets, int B, int T,
                     float loss_grad_scale) {
  LOOM_CHECK(m.par.chunks.size() == 1 && m.par.chunks[0].first && m.par.chunks[0].last);
  return model_forward_chunk(m, 0, 0, 0, inputs, targets, B, T, loss_grad_scale);
}

void model_backward(Model& m, int B, int T, const GradsFinalFn& on_grads_final) {
  LOOM_CHECK(m.par.chunks.size() == 1 && m.par.chunks[0].first && m.par.chunks[0].last);
  model_backward_chunk(m, 0, 0, 0, B, T, on_grads_final);
}

void model_last_logits(Model& m, int B, int T, float* logits) {
  // With sp > 1 the last local row is not the sequence's last token: sample with sp = 1.
  LOOM_CHECK(m.par.sp.size == 1);
  const int rows = m.par.vocab.rows;
  // (B, rows) of this rank's vocabulary on the device (activations, then fp32), then
  // (tp, B, rows) of every rank's on the host.
  const size_t count = static_cast<size_t>(B) * rows;
  kernels::DeviceArray<unsigned char> logits_act(m.buf.backend, count * kb(m).activation_bytes());
  for (int b = 0; b < B; ++b) {
    const void* row =
        act_offset(m, act(m, m.temps.normed_f), (static_cast<size_t>(b) * T + T - 1) * m.spec.C);
    kb(m).matmul_forward(act_offset(m, logits_act.data(), static_cast<size_t>(b) * rows), row,
                         lm_head_weight(m), nullptr, 1, m.spec.C, rows);
  }
  kernels::DeviceArray<float> local(m.buf.backend, count);
  kb(m).from_activation(local.data(), logits_act.data(), count);
  std::vector<float> all(count * m.par.tp.size);
  local.download(all.data(), count);
  if (m.par.tp.comm) {
    std::vector<float> mine(all.begin(), all.begin() + count);
    m.par.tp.comm->all_gather(mine.data(), all.data(), all.size());
  }
  for (int r = 0; r < m.par.tp.size; ++r) {
    const VocabShard shard = vocab_shard(m.spec.V, m.par.tp.size, r);
    for (int b = 0; b < B; ++b)
      std::copy_n(all.data() + (static_cast<size_t>(r) * B + b) * rows, shard.valid,
                  logits + static_cast<size_t>(b) * m.spec.V + shard.vocab_begin);
  }
}

void model_begin_passes(Model& m, TraceRecorder* trace) {
  ModelRouting& routing = m.routing;
  std::fill(routing.active.begin(), routing.active.end(), 0.0);
  routing.tokens = routing.aux_loss = routing.micro_batches = routing.forward_flops = 0;
  m.passes.recompute_flops = 0;
  loop_stats_begin(m);
  m.par.tp_sums.wait_seconds = 0.0;
  m.par.ring.wait_seconds = m.par.ring.compute_seconds = 0.0;
  m.par.ulysses.wait_seconds = 0.0;
  m.par.trace = trace;
  m.par.ring.on_blocked = {};
  if (trace && m.par.sp.comm)
    m.par.ring.on_blocked = [trace](RingAttention::Clock::time_point start,
                                    RingAttention::Clock::time_point end) {
      trace_record(*trace, "sp wait", "sp_wait", start, end);
    };
}

double model_comm_wait_seconds(const Model& m) {
  return m.par.tp_sums.wait_seconds + m.par.ring.wait_seconds + m.par.ulysses.wait_seconds;
}

double position_model_flops(const Model& m, int p, int T) {
  const config::ModelConfig& cfg = m.spec.config;
  const int loop_begin = cfg.prelude_layers(),
            loop_end = loop_begin + cfg.block_layers() * m.spec.loops;
  double lora = 0;
  if (p >= loop_begin && p < loop_end) {
    // Relaxed recursion: each loop position's four linear layers add 2·r·(in + out) each.
    const double C = m.spec.C, F = m.spec.F, r = cfg.loop_lora_rank();
    const double Ckv = static_cast<double>(m.spec.Hkv) * (C / m.spec.H);
    lora = 2.0 * r * ((2 * C + 2 * Ckv) + 2 * C + (C + (is_swiglu(m) ? 2 : 1) * F) + (F + C));
  }
  return layer_model_flops(cfg, T) + lora;
}

double model_train_flops_per_token(const Model& m, int T) {
  // Mixture-of-Recursions: what the last passes ran (each iteration on its tokens).
  if (model_routed(m.spec.config) && m.routing.tokens > 0)
    return model_routing_stats(m).train_flops_per_token;
  double forward = 2.0 * m.spec.C * m.spec.V;  // the LM head
  for (int p = 0; p < static_cast<int>(m.spec.unrolled.size()); ++p)
    forward += position_model_flops(m, p, T);
  return 3.0 * forward;
}

double model_recompute_flops(const Model& m) { return m.passes.recompute_flops; }

}  // namespace loom
