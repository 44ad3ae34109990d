// The walk over a chunk of the unrolled list with its residual schedule (standard or ladder, the
// tensor-parallel sums waited on when first needed), forward and backward, from and to a
// boundary state (core/model.h, docs/architecture.md).
#include "core/model.h"

#include <algorithm>

#include "core/error.h"
#include "core/model_internal.h"

namespace loom {
namespace {

using namespace model_detail;

void check_run(Model& m, int chunk, int slot, int B, int T) {
  LOOM_CHECK(B <= m.plan_B && T <= m.plan_T);
  LOOM_CHECK(chunk >= 0 && chunk < static_cast<int>(m.chunks.size()));
  LOOM_CHECK(slot >= 0 && slot < m.slots);
  LOOM_CHECK(m.tp.size == 1 || m.tp.comm);
  LOOM_CHECK(m.sp.size == 1 || m.sp.comm);  // a layout-only model (planning) does not run
  // The sums over tp and the ring over sp move host fp32 (the MPI backend).
  LOOM_CHECK((m.tp.size == 1 && m.sp.size == 1) || kb(m).activation_bytes() == sizeof(float));
  // On the CPU the attention scratch is per thread: the thread count must not have grown.
  LOOM_CHECK((m.sp.comm ? kb(m).attention_block_scratch_bytes(m.plan_B, m.Hl, m.plan_T, m.plan_T)
                        : kb(m).attention_scratch_bytes(m.plan_B, m.plan_T, m.Cl, m.Hl)) <=
             m.plan_attention_scratch_bytes);
  LOOM_CHECK(!m.sp.comm || T == m.plan_T);  // the positions are planned for plan_T rows
}

// The final norm and the LM head with cross-entropy over the last chunk's stream; returns the
// sum of the token losses.
double head_forward(Model& m, const ModelChunk& c, int slot, const int* targets, int N,
                    float loss_grad_scale) {
  const kernels::KernelBackend& be = kb(m);
  const size_t base = slot_base(m, slot);
  const void* x = act(m, base + c.final_input);
  if (is_layernorm(m))
    be.layernorm_forward(act(m, m.normed_f), stat(m, base + c.mean_f), stat(m, base + c.rstd_f),
                         x, weight(m, m.norm_f_w), weight(m, m.norm_f_b), N, m.C,
                         m.config.norm_eps());
  else
    be.rmsnorm_forward(act(m, m.normed_f), stat(m, base + c.rstd_f), x, weight(m, m.norm_f_w), N,
                       m.C, m.config.norm_eps());
  if (!targets) return 0.0;
  const bool want_grad = loss_grad_scale > 0.0f;
  void* d_normed_f = want_grad ? act(m, base + c.d_normed_f) : nullptr;
  const int chunk = std::min<int>(m.config.lm_head_chunk(), N);
  if (m.tp.comm)  // vocabulary-parallel: full-vocabulary logits never exist on one rank
    return vocab_parallel_cross_entropy(be, *m.tp.comm, d_normed_f,
                                        want_grad ? lm_head_grad(m) : nullptr, act(m, m.normed_f),
                                        lm_head_weight(m), targets, N, m.C, m.vocab,
                                        loss_grad_scale, act(m, m.lm_head_scratch), chunk,
                                        &m.tp_sums.wait_seconds);
  return be.lm_head_cross_entropy(d_normed_f, want_grad ? lm_head_grad(m) : nullptr,
                                  act(m, m.normed_f), lm_head_weight(m), targets, N, m.C, m.V,
                                  loss_grad_scale, act(m, m.lm_head_scratch), chunk);
}

// The learned position rows the embedding adds to this rank's T tokens (tp rank 0 only; null
// otherwise or for rotary models): wpe itself, or with sp > 1 its rows at the rank's positions.
const void* position_rows(Model& m, int T) {
  if (is_rotary(m) || !row_parallel_bias(m, m.wpe)) return nullptr;
  if (!m.sp.comm) return weight(m, m.wpe);
  for (int t = 0; t < T; ++t)
    std::copy_n(m.params.data() + m.wpe + static_cast<size_t>(m.positions[t]) * m.C, m.C,
                stat(m, m.wpe_local) + static_cast<size_t>(t) * m.C);
  return stat(m, m.wpe_local);
}

// The embedding's backward: the token rows' gradients, and the position rows' (with sp > 1
// computed for the local rows, then added to wpe's gradient at their positions).
void embedding_backward(Model& m, const void* dr, const int* tokens, int B, int T) {
  float* dwpe = is_rotary(m) ? nullptr : grad(m, m.wpe);
  if (dwpe && m.sp.comm) {
    dwpe = stat(m, m.dwpe_local);
    std::fill_n(dwpe, static_cast<size_t>(T) * m.C, 0.0f);
  }
  kb(m).embedding_backward(grad(m, m.wte), dwpe, dr, tokens, B, T, m.C, m.vocab.vocab_begin,
                           m.vocab.rows, act(m, m.embedding_scratch));
  if (!dwpe || !m.sp.comm) return;
  for (int t = 0; t < T; ++t) {
    float* to = grad(m, m.wpe) + static_cast<size_t>(m.positions[t]) * m.C;
    const float* from = dwpe + static_cast<size_t>(t) * m.C;
    for (int c = 0; c < m.C; ++c) to[c] += from[c];
  }
}

}  // namespace

double model_forward_chunk(Model& m, int chunk, int slot, int boundary, const int* inputs,
                           const int* targets, int B, int T, float loss_grad_scale) {
  check_run(m, chunk, slot, B, T);
  tp_drain(m.tp_sums);
  const ModelChunk& c = m.chunks[chunk];
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T, d = m.delay;
  const BoundaryState state = model_boundary_state(m, boundary, B, T);
  const size_t NC = state.NC;
  void* r = state.stream();
  // h_j, complete: its tensor-parallel sum has arrived.
  auto pending_output = [&](int sublayer) {
    tp_wait(m, m.tp_sums.forward[sublayer % d]);
    return state.pending(sublayer);
  };
  if (c.first) {
    int* tokens = m.slot_tokens.data() + static_cast<size_t>(slot) * m.plan_B * m.plan_T;
    std::copy(inputs, inputs + N, tokens);
    // Each rank looks up its vocabulary rows (zeros for the others); tp rank 0 adds positions.
    be.embedding_forward(r, tokens, weight(m, m.wte), position_rows(m, T), B, T, m.C,
                         m.vocab.vocab_begin, m.vocab.rows);
    WorkPtr embedded = tp_sum_start(m.tp, r, NC);
    tp_wait(m, embedded);
  }

  const int injection = injection_sublayer(m);
  const int s = 2 * c.begin;
  for (int p = c.begin; p < c.end; ++p) {
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    for (int sub = 0; sub < 2; ++sub) {
      const int i = 2 * p + sub;
      // Ladder: h_{i−2} is waited on here, after h_{i−1}'s all-reduce was started, so each
      // all-reduce runs while the next sub-layer computes. At the chunk's start the previous
      // chunk has added it (the boundary state).
      if (i >= d && !(i == s && !c.first)) be.vector_add(r, pending_output(i - d), NC);
      if (sub == 0 && m.config.input_injection() && p != m.loop_begin &&
          starts_loop_iteration(m, p))
        be.vector_add(r, state.injected(), NC);
      if (i == injection) be.copy(state.injected(), r, NC);
      const SublayerActs a = acts_in_slot(m, c.acts[i - 2 * c.begin], slot);
      be.copy(act(m, a.input), r, NC);
      // Slot i % d held h_{i−d}, just added to r: free for h_i.
      if (sub == 0)
        attention_sublayer_forward(m, o, a, B, T, state.pending(i));
      else
        mlp_sublayer_forward(m, o, a, B, T, state.pending(i));
      m.tp_sums.forward[i % d] = tp_sum_start(m.tp, state.pending(i), NC);
    }
  }
  const int e = 2 * c.end;
  if (!c.last) {  // the boundary state: h_{e−d} added (as sub-layer e would), the rest complete
    be.vector_add(r, pending_output(e - d), NC);
    for (int j = e - d + 1; j < e; ++j) pending_output(j);
    return 0.0;
  }
  for (int j = std::max(0, e - d); j < e; ++j) be.vector_add(r, pending_output(j), NC);
  be.copy(act(m, slot_base(m, slot) + c.final_input), r, NC);
  return head_forward(m, c, slot, targets, N, loss_grad_scale) / N;
}

namespace {

// The weight pass of a split backward: the matrices' gradients from the output gradients the
// input pass kept, sub-layer by sub-layer in the same order; each range reported once final.
void backward_weights(Model& m, const ModelChunk& c, int slot, int N,
                      const GradsFinalFn& on_grads_final) {
  auto report = [&](const ShardRange& r) {
    if (on_grads_final && r.size() > 0) on_grads_final(r.begin, r.size());
  };
  if (c.last) {
    report(m.head_range);
    if (m.has_wte && m.chunks.front().begin != 0) report(m.embedding_range);
  }
  const int s = 2 * c.begin;
  for (int i = 2 * c.end - 1; i >= s; --i) {
    const int p = i / 2, u = m.unrolled[p];
    const SublayerActs a = acts_in_slot(m, c.acts[i - s], slot);
    if (i % 2 == 0) {
      attention_sublayer_weights(m, m.layers[u], a, N);
      if (m.first_use[u] == p) report(m.layer_ranges[u]);
    } else {
      mlp_sublayer_weights(m, m.layers[u], a, N);
    }
  }
  if (c.first) report(m.embedding_range);
}

}  // namespace

void model_backward_chunk(Model& m, int chunk, int slot, int boundary, int B, int T,
                          const GradsFinalFn& on_grads_final, BackwardPart part) {
  check_run(m, chunk, slot, B, T);
  LOOM_CHECK(part == BackwardPart::kAll || m.split_backward);
  if (part == BackwardPart::kWeight)
    return backward_weights(m, m.chunks[chunk], slot, B * T, on_grads_final);
  const bool defer = part == BackwardPart::kInput;  // the weight pass reports the ranges
  tp_drain(m.tp_sums);
  const ModelChunk& c = m.chunks[chunk];
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T, d = m.delay;
  const BoundaryState grad_state = model_boundary_state(m, boundary, B, T);
  const size_t NC = grad_state.NC, base = slot_base(m, slot);
  void* dr = grad_state.stream();
  void* de = grad_state.injected();
  auto d_normed_slot = [&](int sublayer) {
    return act_offset(m, act(m, m.d_normed), (sublayer % d) * NC);
  };
  auto report = [&](const ShardRange& r) {
    if (on_grads_final && !defer && r.size() > 0) on_grads_final(r.begin, r.size());
  };
  const int s = 2 * c.begin, e = 2 * c.end;
  if (m.config.input_injection() && !c.injected_out) be.zero(de, NC);
  if (c.last) {
    be.zero(dr, NC);
    const void* x = act(m, base + c.final_input);
    const void* d_normed_f = act(m, base + c.d_normed_f);
    if (is_layernorm(m))
      be.layernorm_backward(dr, grad(m, m.norm_f_w), grad(m, m.norm_f_b), d_normed_f, x,
                            weight(m, m.norm_f_w), stat(m, base + c.mean_f),
                            stat(m, base + c.rstd_f), N, m.C, act(m, m.norm_scratch));
    else
      be.rmsnorm_backward(dr, grad(m, m.norm_f_w), d_normed_f, x, weight(m, m.norm_f_w),
                          stat(m, base + c.rstd_f), N, m.C, act(m, m.norm_scratch));
    // The final norm and the untied LM head (its gradient came from the forward) are done; so
    // is a tied embedding held here only as the head (its look-up runs on another rank).
    report(m.head_range);
    if (m.has_wte && m.chunks.front().begin != 0) report(m.embedding_range);
    // Reverse of the forward's final additions: every still-pending output sees dr.
    for (int j = std::max(0, e - d); j < e; ++j) be.copy(grad_state.pending(j), dr, NC);
  } else {
    // The next chunk sent the gradient of the stream (h_{e−d} included: its gradient is dr) and
    // of the outputs still pending.
    be.copy(grad_state.pending(e - d), dr, NC);
  }
  const int injection = injection_sublayer(m);

  // Completes sub-layer j's backward: waits for its input gradient's tensor-parallel sum, runs
  // its pre-norm's backward into dr — which then is the gradient of the stream as sub-layer j
  // read it — and reverses what the forward did to the stream right before sub-layer j.
  auto finish = [&](int j) {
    const int p = j / 2;
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    const SublayerActs a = acts_in_slot(m, c.acts[j - s], slot);
    tp_wait(m, m.tp_sums.backward[j % d]);
    if (j % 2 == 0)
      norm_backward(m, o.norm1_w, o.norm1_b, a, N, d_normed_slot(j), dr);
    else
      norm_backward(m, o.norm2_w, o.norm2_b, a, N, d_normed_slot(j), dr);
    if (j == injection) be.vector_add(dr, de, NC);  // reverse of e = r
    if (j % 2 != 0) return;
    if (m.config.input_injection() && p != m.loop_begin && starts_loop_iteration(m, p))
      be.vector_add(de, dr, NC);  // reverse of r += e
    const int u = m.unrolled[p];
    // A unique layer's gradients are final after the backward of its first application here.
    if (m.first_use[u] == p) report(m.layer_ranges[u]);
  };

  // Sub-layer i's output h_i joined the stream right before sub-layer i + d, so its gradient is
  // dr once sub-layer i + d is finished; for i + d ≥ e that was the next chunk's work, and the
  // gradient arrived in the boundary. Sub-layer i's own input-gradient all-reduce is started
  // after its compute and waited on only when sub-layer i − d begins: with the ladder (d = 2)
  // it runs during sub-layer i − 1's backward. Sub-layers below s are the previous chunk's: their
  // output gradients leave in the boundary, with dr.
  for (int i = e - 1; i >= s - d; --i) {
    if (i + d < e) finish(i + d);
    if (i < 0) continue;
    if (i + d < e) be.copy(grad_state.pending(i), dr, NC);
    if (i < s) continue;
    const LayerOffsets& o = m.layers[m.unrolled[i / 2]];
    const SublayerActs a = acts_in_slot(m, c.acts[i - s], slot);
    if (i % 2 == 0)
      attention_sublayer_backward(m, o, a, B, T, grad_state.pending(i), d_normed_slot(i), defer);
    else
      mlp_sublayer_backward(m, o, a, B, T, grad_state.pending(i), d_normed_slot(i), defer);
    m.tp_sums.backward[i % d] = tp_sum_start(m.tp, d_normed_slot(i), NC);
  }
  if (!c.first) return;
  const int* tokens = m.slot_tokens.data() + static_cast<size_t>(slot) * m.plan_B * m.plan_T;
  embedding_backward(m, dr, tokens, B, T);
  report(m.embedding_range);
}

double model_forward(Model& m, const int* inputs, const int* targets, int B, int T,
                     float loss_grad_scale) {
  LOOM_CHECK(m.chunks.size() == 1 && m.chunks[0].first && m.chunks[0].last);
  return model_forward_chunk(m, 0, 0, 0, inputs, targets, B, T, loss_grad_scale);
}

void model_backward(Model& m, int B, int T, const GradsFinalFn& on_grads_final) {
  LOOM_CHECK(m.chunks.size() == 1 && m.chunks[0].first && m.chunks[0].last);
  model_backward_chunk(m, 0, 0, 0, B, T, on_grads_final);
}

void model_last_logits(Model& m, int B, int T, float* logits) {
  // With sp > 1 the last local row is not the sequence's last token: sample with sp = 1.
  LOOM_CHECK(m.sp.size == 1);
  // The matmul writes activations: float logits need an fp32 backend (host memory, for now).
  LOOM_CHECK(kb(m).activation_bytes() == sizeof(float));
  const int rows = m.vocab.rows;
  // (B, rows) of this rank's vocabulary, then (tp, B, rows) of every rank's.
  std::vector<float> local(static_cast<size_t>(B) * rows);
  for (int b = 0; b < B; ++b) {
    const void* row = act_offset(m, act(m, m.normed_f), (static_cast<size_t>(b) * T + T - 1) * m.C);
    kb(m).matmul_forward(local.data() + static_cast<size_t>(b) * rows, row, lm_head_weight(m),
                         nullptr, 1, m.C, rows);
  }
  std::vector<float> all(local.size() * m.tp.size);
  if (m.tp.comm)
    m.tp.comm->all_gather(local.data(), all.data(), all.size());
  else
    all = local;
  for (int r = 0; r < m.tp.size; ++r) {
    const VocabShard shard = vocab_shard(m.V, m.tp.size, r);
    for (int b = 0; b < B; ++b)
      std::copy_n(all.data() + (static_cast<size_t>(r) * B + b) * rows, shard.valid,
                  logits + static_cast<size_t>(b) * m.V + shard.vocab_begin);
  }
}

double model_train_flops_per_token(const Model& m, int T) {
  const double C = m.C, F = m.F, V = m.V;
  const double layer_matmul = 2.0 * (3 * C * C + C * C + 2 * C * F);
  // Causal attention: q·kᵀ and p·v over (T + 1) / 2 keys on average, per channel.
  const double layer_attention = 2.0 * 2.0 * C * (T + 1) / 2.0;
  const double forward =
      static_cast<double>(m.unrolled.size()) * (layer_matmul + layer_attention) + 2.0 * C * V;
  return 3.0 * forward;
}

}  // namespace loom
