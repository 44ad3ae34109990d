#include <algorithm>
#include <chrono>
#include <functional>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom::model_detail {

// A row-parallel layer's bias: added by tp rank 0 only, so the all-reduced sum holds it once.
const void* row_parallel_bias(Model& m, size_t offset) {
  return m.par.tp.rank == 0 ? bias(m, offset) : nullptr;
}

UlyssesWorkspace ulysses_workspace(Model& m, int B, int T) {
  return ulysses_workspace_at(kb(m), act(m, m.temps.ulysses_work),
                              act(m, m.temps.attention_scratch), B, T, m.par.Cl, m.par.Ckvl);
}

RingWorkspace ring_workspace(Model& m, int B, int T) {
  return ring_workspace_at(kb(m), act(m, m.temps.ring_work), stat(m, m.temps.ring_lse),
                           act(m, m.temps.attention_scratch), B, T, m.par.Cl, m.par.Ckvl);
}

LayerOffsets layer_at(const Model& m, int p) {
  LayerOffsets o = m.layout.layers[m.spec.unrolled[p]];
  const int K = m.spec.config.block_layers(), in_loop = p - m.spec.loop_begin;
  if (m.layout.lora.empty() || in_loop < 0 || in_loop >= K * m.spec.loops) return o;
  const LayerOffsets& l = m.layout.lora[in_loop / K][in_loop % K];
  o.qkv_lora = l.qkv_lora;
  o.attn_proj_lora = l.attn_proj_lora;
  o.fc_lora = l.fc_lora;
  o.mlp_proj_lora = l.mlp_proj_lora;
  return o;
}

SublayerActs acts_in_slot(const Model& m, const SublayerActs& a, int slot) {
  const size_t base = slot_base(m, slot);
  return {a.input + base,  a.normed + base,  a.mean + base,     a.rstd + base,
          a.hidden + base, a.hidden2 + base, a.lse + base,      a.d_out + base,
          a.d_mid + base,  a.lora_in + base, a.lora_proj + base};
}

void tp_wait(Model& m, WorkPtr& work) {
  if (!work) return;
  const auto start = std::chrono::steady_clock::now();
  const double blocked = tp_wait(m.par.tp_sums, work);
  // Only waits that blocked (a trace of every completed handle would be mostly noise).
  if (m.par.trace && m.par.trace->enabled && blocked > 20e-6)
    trace_record(*m.par.trace, "tp wait", "tp_wait", start, std::chrono::steady_clock::now());
}

namespace {

// Relaxed recursion's low-rank deltas (model.loop_lora_rank = r): y += B·u, u = A·x (saved at
// `u`, (N, r)). Under tensor parallelism a column-parallel layer (x whole, y this rank's rows)
// holds A whole and its rows of B; a row-parallel one (x this rank's columns, y a partial sum
// all-reduced later) its columns of A and B whole. The rank-r intermediate is then a partial
// sum in one pass: u in a row-parallel forward, v = ∂L/∂u in a column-parallel backward; one
// all-reduce of N·r elements completes it.
void tp_sum_now(Model& m, void* x, size_t n) {
  WorkPtr work = tp_sum_start(m.par.tp, x, n);
  tp_wait(m, work);
}

void lora_forward(Model& m, const LoraFactors& f, bool row_parallel, const void* x, size_t u,
                  void* y, int N, int in, int out) {
  const int r = m.spec.config.loop_lora_rank();
  kb(m).matmul_forward(act(m, u), x, weight(m, f.a), nullptr, N, in, r);
  if (row_parallel) {
    tp_sum_now(m, act(m, u), static_cast<size_t>(N) * r);
    if (m.par.tp.rank != 0) return;  // the all-reduced output holds the delta once
  }
  void* delta = act(m, m.temps.lora_out);
  kb(m).matmul_forward(delta, act(m, u), weight(m, f.b), nullptr, N, r, out);
  kb(m).vector_add(y, delta, static_cast<size_t>(N) * out);
}

// dx += the delta's part of the input gradient (a partial sum, as dx is, in a column-parallel
// layer); dA, dB += their gradients, from dy (this rank's rows, or whole for a row-parallel
// layer).
void lora_backward(Model& m, const LoraFactors& f, bool row_parallel, const void* x, size_t u,
                   const void* dy, void* dx, int N, int in, int out) {
  const int r = m.spec.config.loop_lora_rank();
  void* v = act(m, m.temps.lora_mid);
  void* part = act(m, m.temps.lora_out);
  kb(m).matmul_backward(v, grad(m, f.b), nullptr, dy, act(m, u), weight(m, f.b), N, r, out);
  kb(m).matmul_backward(part, row_parallel ? grad(m, f.a) : nullptr, nullptr, v, x, weight(m, f.a),
                        N, in, r);
  kb(m).vector_add(dx, part, static_cast<size_t>(N) * in);
  if (row_parallel) return;
  tp_sum_now(m, v, static_cast<size_t>(N) * r);  // v whole: A's gradient is the same everywhere
  kb(m).matmul_backward(nullptr, grad(m, f.a), nullptr, v, x, weight(m, f.a), N, in, r);
}

}  // namespace

const void* lm_head_weight(Model& m) {
  return weight(m, m.spec.config.tie_embeddings() ? m.layout.wte : m.layout.lm_head);
}
float* lm_head_grad(Model& m) {
  return grad(m, m.spec.config.tie_embeddings() ? m.layout.wte : m.layout.lm_head);
}

void norm_forward(Model& m, size_t w, size_t b, const SublayerActs& a, int N) {
  if (is_layernorm(m))
    kb(m).layernorm_forward(act(m, a.normed), stat(m, a.mean), stat(m, a.rstd), act(m, a.input),
                            weight(m, w), weight(m, b), N, m.spec.C, m.spec.config.norm_eps());
  else
    kb(m).rmsnorm_forward(act(m, a.normed), stat(m, a.rstd), act(m, a.input), weight(m, w), N,
                          m.spec.C, m.spec.config.norm_eps());
}

// d_input += backward of the pre-norm, from the (complete) gradient of its output.
void norm_backward(Model& m, size_t w, size_t b, const SublayerActs& a, int N, const void* d_normed,
                   void* d_input) {
  if (is_layernorm(m))
    kb(m).layernorm_backward(d_input, grad(m, w), grad(m, b), d_normed, act(m, a.input),
                             weight(m, w), stat(m, a.mean), stat(m, a.rstd), N, m.spec.C,
                             act(m, m.temps.norm_scratch));
  else
    kb(m).rmsnorm_backward(d_input, grad(m, w), d_normed, act(m, a.input), weight(m, w),
                           stat(m, a.rstd), N, m.spec.C, act(m, m.temps.norm_scratch));
}

namespace {

// The rotary tables of the rows a sub-layer runs: positions 0 .. T − 1 (or with sp > 1 the
// rank's), or a routed iteration's tokens' own.
const float* rope_cos(Model& m, bool routed) {
  return stat(m, routed ? m.temps.routed_cos : m.temps.rope_cos);
}
const float* rope_sin(Model& m, bool routed) {
  return stat(m, routed ? m.temps.routed_sin : m.temps.rope_sin);
}

}  // namespace

GatheredRows gather_rows_start(Model& m, const void* local, size_t full, size_t n) {
  if (!m.par.tp.sequence) return {local, nullptr};
  return {act(m, full), tp_gather_start(m.par.tp, local, act(m, full), n)};
}

const void* gathered_rows(Model& m, GatheredRows& g) {
  tp_wait(m, g.work);
  return g.rows;
}

namespace {

// Runs `part(x, from, count)` over rows [from, from + count) of N rows of width C: without
// sequence parallelism once over all of them from `local`; with it first over this rank's own
// `rows` (from `local`) while `g` gathers every rank's, then over the others from the gathered
// rows. Returns all N rows.
const void* own_rows_first(Model& m, GatheredRows& g, const void* local, int N, size_t rows,
                           const std::function<void(const void*, size_t, size_t)>& part) {
  if (!m.par.tp.sequence) {
    part(local, 0, static_cast<size_t>(N));
    return local;
  }
  const size_t own = m.par.tp.rank * rows, after = own + rows;
  part(local, own, rows);
  const void* all = gathered_rows(m, g);
  if (own > 0) part(all, 0, own);
  if (after < static_cast<size_t>(N))
    part(act_offset(m, all, after * m.spec.C), after, static_cast<size_t>(N) - after);
  return all;
}

// A column-parallel layer's output (N, cols) = normed · Wᵀ + b from the pre-norm's output in
// a.normed (rows `rows` of N on this rank); returns the normed input, all N rows. With sequence
// parallelism the other ranks' rows are gathered while this rank's own are multiplied.
const void* column_parallel_forward(Model& m, const SublayerActs& a, size_t w, size_t b, int N,
                                    size_t rows, int cols) {
  const int C = m.spec.C;
  const void* local = act(m, a.normed);
  GatheredRows g = gather_rows_start(m, local, m.temps.gathered, static_cast<size_t>(N) * C);
  return own_rows_first(m, g, local, N, rows, [&](const void* x, size_t from, size_t count) {
    kb(m).matmul_forward(act_offset(m, act(m, a.hidden), from * cols), x, weight(m, w), bias(m, b),
                         static_cast<int>(count), C, cols);
  });
}

}  // namespace

// h (B, T, C) = Attn(norm1(input)): this rank's heads' part of it (all of it when tp = 1).
void attention_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                int T, void* h, const RoutedTokens* routed, int sublayer) {
  const int N = B * T, C = m.spec.C, Cl = m.par.Cl, Hl = m.par.Hl, KVl = m.par.Hkvl;
  const size_t rows = model_stream_rows(m, B, T);
  norm_forward(m, o.norm1_w, o.norm1_b, a, static_cast<int>(rows));
  const void* normed = column_parallel_forward(m, a, o.qkv_w, o.qkv_b, N, rows, qkv_columns(m));
  if (o.qkv_lora.present())
    lora_forward(m, o.qkv_lora, false, normed, a.lora_in, act(m, a.hidden), N, C, qkv_columns(m));
  if (is_rotary(m))
    kb(m).rope_apply(act(m, a.hidden), rope_cos(m, routed), rope_sin(m, routed), B, T, Cl, Hl, KVl,
                     false);
  if (routed)
    routed_attention_forward(m, a, *routed, sublayer);
  else if (m.par.sp.comm && m.par.sp.method == SequenceMethod::kUlysses)  // a head group's whole
    ulysses_attention_forward(m.par.ulysses, kb(m), ulysses_workspace(m, B, T),  // sequence
                              act(m, a.hidden2), stat(m, a.lse), act(m, a.hidden), B, T, Cl, Hl,
                              KVl);
  else if (m.par.sp.comm)  // this rank's rows attend to the whole sequence around the sp ring
    ring_attention_forward(m.par.ring, kb(m), ring_workspace(m, B, T), act(m, a.hidden2),
                           stat(m, a.lse), act(m, a.hidden), B, T, Cl, Hl, KVl);
  else
    kb(m).attention_forward(act(m, a.hidden2), stat(m, a.lse), act(m, a.hidden), B, T, Cl, Hl, KVl,
                            act(m, m.temps.attention_scratch));
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.attn_proj_w),
                       row_parallel_bias(m, o.attn_proj_b), N, Cl, C);
  if (o.attn_proj_lora.present())
    lora_forward(m, o.attn_proj_lora, true, act(m, a.hidden2), a.lora_proj, h, N, Cl, C);
}

// h (B, T, C) = MLP(norm2(input)): this rank's part of it.
void mlp_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                          void* h) {
  const int N = B * T, C = m.spec.C, Fl = m.par.Fl;
  const size_t rows = model_stream_rows(m, B, T);
  norm_forward(m, o.norm2_w, o.norm2_b, a, static_cast<int>(rows));
  const void* normed = column_parallel_forward(m, a, o.fc_w, o.fc_b, N, rows, mlp_columns(m));
  if (o.fc_lora.present())
    lora_forward(m, o.fc_lora, false, normed, a.lora_in, act(m, a.hidden), N, C, mlp_columns(m));
  if (is_swiglu(m))
    kb(m).swiglu_forward(act(m, a.hidden2), act(m, a.hidden), N, Fl);
  else
    kb(m).gelu_forward(act(m, a.hidden2), act(m, a.hidden), static_cast<size_t>(N) * Fl);
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.mlp_proj_w),
                       row_parallel_bias(m, o.mlp_proj_b), N, Fl, C);
  if (o.mlp_proj_lora.present())
    lora_forward(m, o.mlp_proj_lora, true, act(m, a.hidden2), a.lora_proj, h, N, Fl, C);
}

namespace {

// A row-parallel layer's backward from its output gradient (this rank's rows at dh_rows; with
// sequence parallelism every rank's arrive while this rank's own are done): d_in (N, in) =
// dh · W, and unless null dW += dhᵀ · x, db += Σ dh. Returns dh, all N rows.
const void* row_parallel_backward(Model& m, void* d_in, float* dw, float* db, const void* dh_rows,
                                  const void* x, size_t w, int N, size_t rows, int in) {
  const int C = m.spec.C;
  GatheredRows g = gather_rows_start(m, dh_rows, m.temps.gathered_grad, static_cast<size_t>(N) * C);
  return own_rows_first(m, g, dh_rows, N, rows, [&](const void* dh, size_t from, size_t count) {
    kb(m).matmul_backward(act_offset(m, d_in, from * in), dw, db, dh, act_offset(m, x, from * in),
                          weight(m, w), static_cast<int>(count), in, C);
  });
}

// A matrix's (or bias's) parameter gradients now (nullptr: none, or no such tensor), or (defer)
// none: the weight pass computes them later from the output gradient kept in the slot.
float* now(Model& m, size_t offset, bool defer) { return defer ? nullptr : bias_grad(m, offset); }

}  // namespace

void attention_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                 int T, const void* dh_rows, void* d_normed, bool defer_weights,
                                 const RoutedTokens* routed, int sublayer) {
  const int N = B * T, C = m.spec.C, Cl = m.par.Cl, Hl = m.par.Hl, KVl = m.par.Hkvl;
  const bool defer = defer_weights;
  const size_t rows = model_stream_rows(m, B, T);
  void* d_attn = act(m, m.temps.d_hidden2);                  // (B, T, Cl)
  void* d_qkv = act(m, defer ? a.d_mid : m.temps.d_hidden);  // (B, T, qkv_columns)
  const void* dh =
      row_parallel_backward(m, d_attn, now(m, o.attn_proj_w, defer), now(m, o.attn_proj_b, defer),
                            dh_rows, act(m, a.hidden2), o.attn_proj_w, N, rows, Cl);
  // The pre-norm's output, all rows, arrives while the attention's backward runs.
  GatheredRows normed =
      gather_rows_start(m, act(m, a.normed), m.temps.gathered, static_cast<size_t>(N) * C);
  if (defer) kb(m).copy(act(m, a.d_out), dh, static_cast<size_t>(N) * C);
  if (o.attn_proj_lora.present())
    lora_backward(m, o.attn_proj_lora, true, act(m, a.hidden2), a.lora_proj, dh, d_attn, N, Cl, C);
  if (routed)
    routed_attention_backward(m, a, *routed, sublayer, d_qkv, d_attn);
  else if (m.par.sp.comm && m.par.sp.method == SequenceMethod::kUlysses)
    ulysses_attention_backward(m.par.ulysses, kb(m), ulysses_workspace(m, B, T), d_qkv, d_attn,
                               act(m, a.hidden), act(m, a.hidden2), stat(m, a.lse), B, T, Cl, Hl,
                               KVl);
  else if (m.par.sp.comm)
    ring_attention_backward(m.par.ring, kb(m), ring_workspace(m, B, T), d_qkv, d_attn,
                            act(m, a.hidden), act(m, a.hidden2), stat(m, a.lse), B, T, Cl, Hl, KVl);
  else
    kb(m).attention_backward(d_qkv, d_attn, act(m, a.hidden), act(m, a.hidden2), stat(m, a.lse), B,
                             T, Cl, Hl, KVl, act(m, m.temps.attention_scratch));
  if (is_rotary(m))
    kb(m).rope_apply(d_qkv, rope_cos(m, routed), rope_sin(m, routed), B, T, Cl, Hl, KVl, true);
  const void* x = gathered_rows(m, normed);
  kb(m).matmul_backward(d_normed, now(m, o.qkv_w, defer), now(m, o.qkv_b, defer), d_qkv, x,
                        weight(m, o.qkv_w), N, C, qkv_columns(m));
  if (o.qkv_lora.present())
    lora_backward(m, o.qkv_lora, false, x, a.lora_in, d_qkv, d_normed, N, C, qkv_columns(m));
}

void mlp_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                           const void* dh_rows, void* d_normed, bool defer_weights) {
  const int N = B * T, C = m.spec.C, Fl = m.par.Fl;
  const bool defer = defer_weights;
  const size_t rows = model_stream_rows(m, B, T);
  void* d_hidden = act(m, defer ? a.d_mid : m.temps.d_hidden);  // (B, T, mlp_columns)
  // The activation's output gradient: in place for GELU, beside it for SwiGLU (whose input is
  // twice as wide).
  void* d_act = is_swiglu(m) ? act(m, m.temps.d_hidden2) : d_hidden;  // (B, T, Fl)
  const void* dh =
      row_parallel_backward(m, d_act, now(m, o.mlp_proj_w, defer), now(m, o.mlp_proj_b, defer),
                            dh_rows, act(m, a.hidden2), o.mlp_proj_w, N, rows, Fl);
  GatheredRows normed =
      gather_rows_start(m, act(m, a.normed), m.temps.gathered, static_cast<size_t>(N) * C);
  if (defer) kb(m).copy(act(m, a.d_out), dh, static_cast<size_t>(N) * C);
  if (o.mlp_proj_lora.present())
    lora_backward(m, o.mlp_proj_lora, true, act(m, a.hidden2), a.lora_proj, dh, d_act, N, Fl, C);
  if (is_swiglu(m))
    kb(m).swiglu_backward(d_hidden, act(m, a.hidden), d_act, N, Fl);
  else
    kb(m).gelu_backward(d_hidden, act(m, a.hidden), d_hidden, static_cast<size_t>(N) * Fl);
  const void* x = gathered_rows(m, normed);
  kb(m).matmul_backward(d_normed, now(m, o.fc_w, defer), now(m, o.fc_b, defer), d_hidden, x,
                        weight(m, o.fc_w), N, C, mlp_columns(m));
  if (o.fc_lora.present())
    lora_backward(m, o.fc_lora, false, x, a.lora_in, d_hidden, d_normed, N, C, mlp_columns(m));
}

// The same matrices' gradients, in the same order, as the backward without defer_weights adds.
void attention_sublayer_weights(Model& m, const LayerOffsets& o, const SublayerActs& a, int N) {
  const int C = m.spec.C, Cl = m.par.Cl;
  kb(m).matmul_backward(nullptr, grad(m, o.attn_proj_w), bias_grad(m, o.attn_proj_b),
                        act(m, a.d_out), act(m, a.hidden2), weight(m, o.attn_proj_w), N, Cl, C);
  GatheredRows normed =
      gather_rows_start(m, act(m, a.normed), m.temps.gathered, static_cast<size_t>(N) * C);
  kb(m).matmul_backward(nullptr, grad(m, o.qkv_w), bias_grad(m, o.qkv_b), act(m, a.d_mid),
                        gathered_rows(m, normed), weight(m, o.qkv_w), N, C, qkv_columns(m));
}

void mlp_sublayer_weights(Model& m, const LayerOffsets& o, const SublayerActs& a, int N) {
  const int C = m.spec.C, Fl = m.par.Fl;
  kb(m).matmul_backward(nullptr, grad(m, o.mlp_proj_w), bias_grad(m, o.mlp_proj_b), act(m, a.d_out),
                        act(m, a.hidden2), weight(m, o.mlp_proj_w), N, Fl, C);
  GatheredRows normed =
      gather_rows_start(m, act(m, a.normed), m.temps.gathered, static_cast<size_t>(N) * C);
  kb(m).matmul_backward(nullptr, grad(m, o.fc_w), bias_grad(m, o.fc_b), act(m, a.d_mid),
                        gathered_rows(m, normed), weight(m, o.fc_w), N, C, mlp_columns(m));
}

bool starts_loop_iteration(const Model& m, int position) {
  const int block = m.spec.config.block_layers();
  const int end = m.spec.loop_begin + block * m.spec.loops;
  return position >= m.spec.loop_begin && position < end &&
         (position - m.spec.loop_begin) % block == 0;
}

// With input injection, the sub-layer at which the prelude's output e is taken: right after the
// prelude's last output h_{P−1} joins the stream (P = the loop's first sub-layer), which is when
// sub-layer P − 1 + delay reads it, so no all-reduce has to be waited on early. −1 without.
int injection_sublayer(const Model& m) {
  return m.spec.config.input_injection() ? 2 * m.spec.loop_begin + m.spec.delay - 1 : -1;
}

bool boundary_carries_injected(const Model& m, int sublayer) {
  const int injection = injection_sublayer(m);
  if (injection < 0 || injection >= sublayer) return false;
  // A loop iteration after the first that starts at or after this boundary adds e.
  const int block = m.spec.config.block_layers();
  const int last_start = m.spec.loop_begin + block * (m.spec.loops - 1);
  return 2 * last_start >= sublayer;
}

}  // namespace loom::model_detail
