// Mixture-of-Recursions (model.recursion_router; Bae et al. 2025): each loop iteration runs the
// shared block on the tokens a router chooses, gathered per sequence in their original order,
// and adds their gated update to the stream; the others keep theirs (docs/architecture.md,
// "Mixture-of-Recursions"). The prelude and coda run as in any model. pp = sp = 1, the standard
// residual and no recomputation (validate_config), so one chunk walks the whole list.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom::model_detail {
namespace {

using config::ModelConfig;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// log(1 + eˣ) without overflow.
double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

bool expert_choice(const Model& m) {
  return m.spec.config.recursion_router() == ModelConfig::EXPERT_CHOICE;
}

// The router's logits (N, count) of the N tokens of stream H, from its rows first ..
// first + count − 1, into `out` on the host.
void router_logits(Model& m, const void* H, int N, int first, int count, std::vector<float>& out) {
  const kernels::KernelBackend& be = kb(m);
  const int C = m.spec.C;
  const size_t n = static_cast<size_t>(N) * count;
  be.matmul_forward(act(m, m.temps.router_logits), H,
                    weight(m, m.layout.router + static_cast<size_t>(first) * C), nullptr, N, C,
                    count);
  be.from_activation(stat(m, m.temps.router_logits32), act(m, m.temps.router_logits), n);
  out.resize(n);
  be.download(out.data(), stat(m, m.temps.router_logits32), n * sizeof(float));
}

// dr (N, C) += the router's input gradient from d_logits (N, count, host), and its rows'
// weight gradients.
void router_backward(Model& m, const void* H, const std::vector<float>& d_logits, int N, int first,
                     int count, void* dr) {
  const kernels::KernelBackend& be = kb(m);
  const int C = m.spec.C;
  const size_t router = m.layout.router + static_cast<size_t>(first) * C;
  be.upload(stat(m, m.temps.router_logits32), d_logits.data(), d_logits.size() * sizeof(float));
  be.to_activation(act(m, m.temps.router_logits), stat(m, m.temps.router_logits32),
                   d_logits.size());
  void* dx = act(m, m.temps.routed_state);  // free: the iteration's backward is done
  be.matmul_backward(dx, grad(m, router), nullptr, act(m, m.temps.router_logits), H,
                     weight(m, router), N, C, count);
  be.vector_add(dr, dx, static_cast<size_t>(N) * C);
}

// Expert choice at iteration r: of each sequence's tokens still active (all at r = 0, else the
// previous iteration's), the top recursion_keep(r, T) by the router's logit (ties: the earlier
// token), in their original order; gate α·σ(logit). Returns the auxiliary loss's sum over the
// scored tokens: BCE of the logits against the kept mask.
double route_expert(Model& m, LoopRoute& route, const LoopRoute* previous, int r, int B, int T,
                    const void* H) {
  const int N = B * T, keep = recursion_keep(m.spec.config, r, T);
  const double alpha = m.spec.config.recursion_gate_scale();
  router_logits(m, H, N, r, 1, route.logits);
  if (previous) {
    route.scored = previous->rows;
  } else {
    route.scored.resize(N);
    std::iota(route.scored.begin(), route.scored.end(), 0);
  }
  route.rows.clear();
  route.gates.clear();
  route.lengths.assign(B, 0);
  const std::vector<float>& s = route.logits;
  double aux = 0;
  auto first = route.scored.begin();
  for (int b = 0; b < B; ++b) {
    auto last = std::find_if(first, route.scored.end(), [&](int t) { return t >= (b + 1) * T; });
    std::vector<int> chosen(first, last);
    const int k = std::min<int>(keep, static_cast<int>(chosen.size()));
    std::partial_sort(chosen.begin(), chosen.begin() + k, chosen.end(),
                      [&](int x, int y) { return s[x] != s[y] ? s[x] > s[y] : x < y; });
    chosen.resize(k);
    std::sort(chosen.begin(), chosen.end());
    for (auto t = first; t != last; ++t) aux += softplus(s[*t]);
    for (const int t : chosen) {
      aux -= s[t];
      route.rows.push_back(t);
      route.gates.push_back(static_cast<float>(alpha * sigmoid(s[t])));
    }
    route.lengths[b] = k;
    first = last;
  }
  return aux;
}

// Token choice: one router on the loop's input gives each token t a softmax p_t over the
// `loops` depths; it runs iterations 0 .. argmax p_t, each with gate α·p_t[argmax]. Returns the
// balancing loss loops · Σ_j f_j P_j (f_j: the tokens' share choosing depth j, P_j: their mean
// probability of it).
double route_tokens(Model& m, std::vector<LoopRoute>& routes, int B, int T, const void* H) {
  const int N = B * T, R = m.spec.loops;
  const double alpha = m.spec.config.recursion_gate_scale();
  LoopRoute& first = routes[0];
  router_logits(m, H, N, 0, R, first.logits);
  first.depth.assign(N, 0);
  std::vector<float> gate(N);
  std::vector<double> f(R, 0.0), P(R, 0.0);
  for (int t = 0; t < N; ++t) {
    const float* z = first.logits.data() + static_cast<size_t>(t) * R;
    const int j = static_cast<int>(std::max_element(z, z + R) - z);
    double sum = 0;
    for (int k = 0; k < R; ++k) sum += std::exp(static_cast<double>(z[k]) - z[j]);
    for (int k = 0; k < R; ++k) P[k] += std::exp(static_cast<double>(z[k]) - z[j]) / sum / N;
    first.depth[t] = j;
    f[j] += 1.0 / N;
    gate[t] = static_cast<float>(alpha / sum);  // p_t[j] = 1 / sum
  }
  for (int r = 0; r < R; ++r) {
    LoopRoute& route = routes[r];
    route.rows.clear();
    route.gates.clear();
    route.lengths.assign(B, 0);
    for (int t = 0; t < N; ++t)
      if (first.depth[t] >= r) {
        route.rows.push_back(t);
        route.gates.push_back(gate[t]);
        ++route.lengths[t / T];
      }
  }
  double balance = 0;
  for (int j = 0; j < R; ++j) balance += R * f[j] * P[j];
  return balance;
}

// Gradient of the token-choice router's logits (N, R) from the gates' gradients (summed over
// the iterations each token ran, d_gate) and the balancing loss (scaled by `scale`).
std::vector<float> token_router_gradient(const Model& m, const LoopRoute& first,
                                         const std::vector<double>& d_gate, double scale) {
  const int N = static_cast<int>(first.depth.size()), R = m.spec.loops;
  const double alpha = m.spec.config.recursion_gate_scale();
  std::vector<double> f(R, 0.0);
  for (const int j : first.depth) f[j] += 1.0 / N;
  std::vector<float> dz(static_cast<size_t>(N) * R);
  std::vector<double> p(R), dp(R);
  for (int t = 0; t < N; ++t) {
    const float* z = first.logits.data() + static_cast<size_t>(t) * R;
    const int j = first.depth[t];
    double sum = 0;
    for (int k = 0; k < R; ++k) sum += p[k] = std::exp(static_cast<double>(z[k]) - z[j]);
    double dot = 0;
    for (int k = 0; k < R; ++k) {
      p[k] /= sum;
      dp[k] = scale * m.spec.config.recursion_aux_weight() * R * f[k] +
              (k == j ? alpha * d_gate[t] : 0.0);
      dot += p[k] * dp[k];
    }
    for (int k = 0; k < R; ++k)
      dz[static_cast<size_t>(t) * R + k] = static_cast<float>(p[k] * (dp[k] - dot));
  }
  return dz;
}

// Gradient of expert choice's router logits (B·T; 0 for tokens not scored) from the kept tokens'
// gates' gradients and the auxiliary BCE on every scored token (scaled by `scale`).
std::vector<float> expert_router_gradient(const Model& m, const LoopRoute& route,
                                          const std::vector<double>& d_gate, double scale) {
  const double alpha = m.spec.config.recursion_gate_scale(),
               weight = m.spec.config.recursion_aux_weight();
  std::vector<float> d_logits(route.logits.size(), 0.0f);
  size_t kept = 0;
  for (const int t : route.scored) {
    const double s = route.logits[t];
    const bool is_kept = kept < route.rows.size() && route.rows[kept] == t;
    double d = weight * scale * (sigmoid(s) - (is_kept ? 1.0 : 0.0));
    if (is_kept) d += d_gate[kept++] * alpha * sigmoid(s) * (1.0 - sigmoid(s));
    d_logits[t] = static_cast<float>(d);
  }
  return d_logits;
}

// Each run of consecutive positions in the route's rows (within one sequence of T):
// f(sequence, first packed row, length, first position).
template <typename F>
void for_each_run(const LoopRoute& route, int T, F f) {
  const std::vector<int>& rows = route.rows;
  size_t row = 0;
  for (size_t b = 0; b < route.lengths.size(); ++b) {
    const int n = route.lengths[b];
    for (int i = 0; i < n;) {
      int run = 1;
      while (i + run < n && rows[row + i + run] == rows[row + i] + run) ++run;
      f(static_cast<int>(b), row + i, run, rows[row + i] % T);
      i += run;
    }
    row += n;
  }
}

// Rotary angles of the route's tokens at their own positions (m.temps.routed_cos/sin), copied
// from the table of positions 0 .. T − 1 in runs of consecutive positions.
void routed_rope(Model& m, const LoopRoute& route, int T) {
  if (!is_rotary(m)) return;
  const size_t half = m.spec.C / m.spec.H / 2;
  for_each_run(route, T, [&](int, size_t row, int run, int position) {
    for (const auto& [to, table] : {std::pair{m.temps.routed_cos, m.temps.rope_cos},
                                    std::pair{m.temps.routed_sin, m.temps.rope_sin}})
      kb(m).copy_bytes(stat(m, to) + row * half, stat(m, table) + position * half,
                       run * half * sizeof(float));
  });
}

const int* device_rows(Model& m, const LoopRoute& route) {
  return m.routing.rows.data() + route.device;
}
const float* device_gates(Model& m, const LoopRoute& route) {
  return m.routing.gates.data() + route.device;
}

// SHARED_FIRST: `run` query rows at positions position .. against the first iteration's keys
// and values of their sequence, causal by position.
kernels::AttentionBlock shared_block(const Model& m, int run, int position, int T) {
  kernels::AttentionBlock blk;
  const int columns = qkv_columns(m);
  blk.B = 1, blk.H = m.par.Hl, blk.hd = m.spec.C / m.spec.H, blk.kv_heads = m.par.Hkvl;
  blk.q_len = run, blk.q_begin = 0, blk.q_rows = run, blk.q_ld = columns;
  blk.kv_len = T, blk.kv_begin = 0, blk.kv_rows = position + run, blk.kv_ld = columns;
  blk.v_offset = m.par.Ckvl;
  blk.causal = true, blk.q_position = position, blk.kv_position = 0;
  return blk;
}

// Each sequence's rows among themselves (B = 1 calls at its rows' offsets).
void packed_attention(Model& m, const SublayerActs& a, const RoutedTokens& routed, void* d_qkv,
                      const void* d_out, bool backward) {
  const int Cl = m.par.Cl, Hl = m.par.Hl, KVl = m.par.Hkvl, columns = qkv_columns(m);
  size_t row = 0;
  for (const int n : routed.route->lengths) {
    if (n > 0) {
      void* out = act_offset(m, act(m, a.hidden2), row * Cl);
      const void* qkv = act_offset(m, act(m, a.hidden), row * columns);
      float* lse = stat(m, a.lse) + row * Hl;
      if (backward)
        kb(m).attention_backward(act_offset(m, d_qkv, row * columns),
                                 act_offset(m, d_out, row * Cl), qkv, out, lse, 1, n, Cl, Hl, KVl,
                                 act(m, m.temps.attention_scratch));
      else
        kb(m).attention_forward(out, lse, qkv, 1, n, Cl, Hl, KVl,
                                act(m, m.temps.attention_scratch));
    }
    row += n;
  }
}

// What a routed iteration's walk needs besides its route: under SHARED_FIRST the first
// iteration's qkv of each block layer (kept in the slot) and the gradient buffer of its keys and
// values (m.temps.shared_dqkv, one (B·T, qkv) per block layer).
RoutedTokens routed_tokens(Model& m, const ModelChunk& c, int slot, const LoopRoute& route, int r,
                           int T) {
  RoutedTokens routed{&route, T, {}, {}, {}};
  if (m.spec.config.recursion_kv() != ModelConfig::SHARED_FIRST) return routed;
  const int P = m.spec.loop_begin, K = m.spec.config.block_layers();
  auto layer = [P, K](int sublayer) { return (sublayer / 2 - P) % K; };
  auto dqkv = [&m, layer](int sublayer) {
    return act_offset(m, act(m, m.temps.shared_dqkv),
                      static_cast<size_t>(layer(sublayer)) * m.plan.B * m.plan.T * qkv_columns(m));
  };
  if (r == 0) {
    routed.own_dqkv = dqkv;
    return routed;
  }
  routed.shared_dqkv = dqkv;
  routed.shared_qkv = [&m, &c, slot, P, layer](int sublayer) -> const void* {
    return act(m, acts_of(m, c, slot, 2 * (P + layer(sublayer))).hidden);
  };
  return routed;
}

// Forward FLOPs of `layers` layers over sequences of these lengths (attention grows with each).
double layers_flops(const Model& m, const std::vector<int>& lengths, int layers) {
  double flops = 0;
  for (const int n : lengths)
    if (n > 0) flops += static_cast<double>(n) * layer_forward_flops(m.spec.config, n);
  return flops * layers;
}

}  // namespace

void routed_attention_forward(Model& m, const SublayerActs& a, const RoutedTokens& routed,
                              int sublayer) {
  const void* shared = routed.shared_qkv ? routed.shared_qkv(sublayer) : nullptr;
  if (!shared) return packed_attention(m, a, routed, nullptr, nullptr, false);
  const int Cl = m.par.Cl, Hl = m.par.Hl, columns = qkv_columns(m);
  for_each_run(*routed.route, routed.T, [&](int b, size_t row, int run, int position) {
    kb(m).attention_block_forward(
        act_offset(m, act(m, a.hidden2), row * Cl), stat(m, a.lse) + row * Hl,
        act_offset(m, act(m, a.hidden), row * columns),
        act_offset(m, shared, static_cast<size_t>(b) * routed.T * columns + Cl),
        shared_block(m, run, position, routed.T), act(m, m.temps.attention_scratch));
  });
}

void routed_attention_backward(Model& m, const SublayerActs& a, const RoutedTokens& routed,
                               int sublayer, void* d_qkv, const void* d_out) {
  const int Cl = m.par.Cl, Hl = m.par.Hl, columns = qkv_columns(m);
  const size_t n = routed.route->rows.size();
  void* shared_d = routed.shared_dqkv ? routed.shared_dqkv(sublayer) : nullptr;
  if (!shared_d) {
    packed_attention(m, a, routed, d_qkv, d_out, true);
    if (const void* own = routed.own_dqkv ? routed.own_dqkv(sublayer) : nullptr)
      kb(m).vector_add(d_qkv, own, n * columns);  // the first iteration runs every token
    return;
  }
  // The tokens' own keys and values are unused: their gradient is 0.
  const void* shared = routed.shared_qkv(sublayer);
  kb(m).zero(d_qkv, n * columns);
  for_each_run(*routed.route, routed.T, [&](int b, size_t row, int run, int position) {
    const size_t kv = static_cast<size_t>(b) * routed.T * columns + Cl;
    kb(m).attention_block_backward(
        act_offset(m, d_qkv, row * columns), act_offset(m, shared_d, kv),
        act_offset(m, d_out, row * Cl), act_offset(m, act(m, a.hidden), row * columns),
        act_offset(m, shared, kv), act_offset(m, act(m, a.hidden2), row * Cl),
        stat(m, a.lse) + row * Hl, shared_block(m, run, position, routed.T),
        act(m, m.temps.attention_scratch));
  });
}

void routed_forward(Model& m, const ModelChunk& c, int slot, const BoundaryState& state, int B,
                    int T, float loss_grad_scale) {
  const kernels::KernelBackend& be = kb(m);
  const int P = m.spec.loop_begin, K = m.spec.config.block_layers(), R = m.spec.loops,
            end = static_cast<int>(m.spec.unrolled.size()), N = B * T, C = m.spec.C;
  const size_t NC = static_cast<size_t>(N) * C, base = slot_base(m, slot);
  auto acts = [&m, &c, slot](int i) { return acts_of(m, c, slot, i); };
  if (P > 0) forward_walk(m, state, {0, P, B, T, acts, {}, WalkEnd::kBoundary});
  void* H = state.stream();
  std::vector<LoopRoute>& routes = m.routing.routes[slot];
  m.routing.grad_scale[slot] = loss_grad_scale;
  double aux = 0;
  if (!expert_choice(m))
    aux = m.spec.config.recursion_aux_weight() * route_tokens(m, routes, B, T, H);
  ModelRouting& stats = m.routing;
  stats.forward_flops += static_cast<double>(P + m.spec.config.coda_layers()) * N *
                             layer_forward_flops(m.spec.config, T) +
                         2.0 * C * R * N + 2.0 * C * m.spec.V * N;
  for (int r = 0; r < R; ++r) {
    be.copy(act(m, base + c.routed_stream[r]), H, NC);
    LoopRoute& route = routes[r];
    if (expert_choice(m))
      aux += m.spec.config.recursion_aux_weight() / N *
             route_expert(m, route, r > 0 ? &routes[r - 1] : nullptr, r, B, T, H);
    const int n = static_cast<int>(route.rows.size());
    route.device = (static_cast<size_t>(slot) * R + r) * N;
    m.routing.rows.upload(route.rows.data(), n, route.device);
    m.routing.gates.upload(route.gates.data(), n, route.device);
    stats.active[r] += n;
    stats.forward_flops += layers_flops(m, route.lengths, K);
    if (n == 0) continue;
    const BoundaryState g{act(m, m.temps.routed_state), static_cast<size_t>(n) * C, 1,
                          be.activation_bytes()};
    const int* rows = device_rows(m, route);
    be.gather_rows(g.stream(), H, rows, nullptr, n, C);
    routed_rope(m, route, T);
    const RoutedTokens tokens = routed_tokens(m, c, slot, route, r, T);
    forward_walk(m, g, {P + r * K, P + (r + 1) * K, 1, n, acts, {}, WalkEnd::kBoundary, &tokens});
    be.copy(act(m, base + c.routed_out[r]), g.stream(), g.NC);
    // H[rows] += g · (block(H[rows]) − H[rows])
    be.gather_rows(g.pending(0), H, rows, device_gates(m, route), n, C);
    be.scatter_add_rows(H, g.pending(0), rows, nullptr, -1.0f, n, C);
    be.scatter_add_rows(H, g.stream(), rows, device_gates(m, route), 1.0f, n, C);
  }
  stats.tokens += N;
  stats.micro_batches += 1;
  stats.aux_loss += aux;
  if (end > P + R * K) forward_walk(m, state, {P + R * K, end, B, T, acts, {}, WalkEnd::kBoundary});
}

void routed_backward(BackwardRun& run) {
  Model& m = run.m;
  const ModelChunk& c = run.c;
  const kernels::KernelBackend& be = kb(m);
  const int P = m.spec.loop_begin, K = m.spec.config.block_layers(), R = m.spec.loops,
            end = static_cast<int>(m.spec.unrolled.size()), B = run.B, T = run.T, N = B * T,
            C = m.spec.C;
  const size_t base = slot_base(m, run.slot);
  const double scale = m.routing.grad_scale[run.slot];
  auto acts = [&m, &c, slot = run.slot](int i) { return acts_of(m, c, slot, i); };
  void* dr = run.grad_state.stream();
  if (m.spec.config.recursion_kv() == ModelConfig::SHARED_FIRST)  // filled by iterations ≥ 1
    be.zero(act(m, m.temps.shared_dqkv),
            static_cast<size_t>(K) * m.plan.B * m.plan.T * qkv_columns(m));
  if (end > P + R * K) backward_range(run, P + R * K, end, acts);
  std::vector<LoopRoute>& routes = m.routing.routes[run.slot];
  std::vector<double> d_gate_of_token(N, 0.0);  // token choice: over the iterations it ran
  for (int r = R - 1; r >= 0; --r) {
    const LoopRoute& route = routes[r];
    const int n = static_cast<int>(route.rows.size());
    const void* H = act(m, base + c.routed_stream[r]);
    std::vector<double> d_gate(n);
    if (n > 0) {
      const BoundaryState g{act(m, m.temps.routed_state), static_cast<size_t>(n) * C, 1,
                            be.activation_bytes()};
      const int* rows = device_rows(m, route);
      // ∂L/∂g_i = ⟨∂L/∂H'_i, block output_i − H_i⟩
      float* dots = m.routing.scratch.data();
      be.row_dots(dots, dr, act(m, base + c.routed_out[r]), rows, n, C);
      be.gather_rows(g.pending(0), H, rows, nullptr, n, C);
      be.row_dots(dots + n, dr, g.pending(0), rows, n, C);
      std::vector<float> host(2 * static_cast<size_t>(n));
      m.routing.scratch.download(host.data(), host.size());
      for (int i = 0; i < n; ++i) d_gate[i] = static_cast<double>(host[i]) - host[n + i];
      // The block's output gradient g·∂L/∂H' (taken out of the kept rows' pass-through), back
      // to its input, which joins ∂L/∂H.
      be.gather_rows(g.stream(), dr, rows, device_gates(m, route), n, C);
      be.scatter_add_rows(dr, g.stream(), rows, nullptr, -1.0f, n, C);
      routed_rope(m, route, T);
      const RoutedTokens tokens = routed_tokens(m, c, run.slot, route, r, T);
      BackwardRun block{m, c, run.slot, 1, n, g, false, run.report, &tokens};
      backward_range(block, P + r * K, P + (r + 1) * K, acts);
      be.scatter_add_rows(dr, g.stream(), rows, nullptr, 1.0f, n, C);
    }
    if (!expert_choice(m)) {
      for (int i = 0; i < n; ++i) d_gate_of_token[route.rows[i]] += d_gate[i];
      if (r == 0)
        router_backward(m, H, token_router_gradient(m, route, d_gate_of_token, scale), N, 0, R, dr);
      continue;
    }
    router_backward(m, H, expert_router_gradient(m, route, d_gate, scale), N, r, 1, dr);
  }
  if (P > 0) backward_range(run, 0, P, acts);
}

}  // namespace loom::model_detail

namespace loom {

RoutingStats model_routing_stats(const Model& m) {
  RoutingStats out;
  const ModelRouting& r = m.routing;
  if (r.tokens == 0) return out;
  for (const double a : r.active) out.active_fraction.push_back(a / r.tokens);
  out.aux_loss = r.aux_loss / r.micro_batches;
  out.train_flops_per_token = 3.0 * r.forward_flops / r.tokens;
  return out;
}

}  // namespace loom
