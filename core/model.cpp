#include "core/model.h"

#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "core/error.h"
#include "core/rng.h"

namespace loom {
namespace {

using config::ModelConfig;

bool is_layernorm(const Model& m) { return m.config.norm() == ModelConfig::LAYERNORM; }
bool is_rotary(const Model& m) { return m.config.position() == ModelConfig::ROTARY; }

size_t add_tensor(Model& m, std::string name, std::vector<int64_t> shape, bool decay) {
  size_t size = 1;
  for (int64_t d : shape) size *= static_cast<size_t>(d);
  m.tensors.push_back({std::move(name), std::move(shape), m.num_params, size, decay});
  m.num_params += size;
  return m.tensors.back().offset;
}

void add_layer(Model& m, const std::string& prefix) {
  const int64_t C = m.C, F = m.F;
  const bool ln = is_layernorm(m);
  LayerOffsets o{};
  o.norm1_w = add_tensor(m, prefix + "norm1.weight", {C}, false);
  if (ln) o.norm1_b = add_tensor(m, prefix + "norm1.bias", {C}, false);
  o.qkv_w = add_tensor(m, prefix + "attn.qkv.weight", {3 * C, C}, true);
  o.qkv_b = add_tensor(m, prefix + "attn.qkv.bias", {3 * C}, false);
  o.attn_proj_w = add_tensor(m, prefix + "attn.proj.weight", {C, C}, true);
  o.attn_proj_b = add_tensor(m, prefix + "attn.proj.bias", {C}, false);
  o.norm2_w = add_tensor(m, prefix + "norm2.weight", {C}, false);
  if (ln) o.norm2_b = add_tensor(m, prefix + "norm2.bias", {C}, false);
  o.fc_w = add_tensor(m, prefix + "mlp.fc.weight", {F, C}, true);
  o.fc_b = add_tensor(m, prefix + "mlp.fc.bias", {F}, false);
  o.mlp_proj_w = add_tensor(m, prefix + "mlp.proj.weight", {C, F}, true);
  o.mlp_proj_b = add_tensor(m, prefix + "mlp.proj.bias", {C}, false);
  m.layers.push_back(o);
}

// Bump allocator over the arena, in floats; every offset is a multiple of 16 floats.
struct ArenaPlan {
  size_t used = 0;
  size_t take(size_t n) {
    size_t at = used;
    used += (n + 15) / 16 * 16;
    return at;
  }
};

const kernels::KernelBackend& kb(const Model& m) { return *m.backend; }

// Arena regions: activations (the backend's type) and fp32 statistics or tables.
void* act(Model& m, size_t offset) { return m.arena.data() + offset; }
float* stat(Model& m, size_t offset) { return m.arena.data() + offset; }
// The activation `elements` past `base`.
void* act_offset(const Model& m, void* base, size_t elements) {
  return static_cast<char*>(base) + elements * kb(m).activation_bytes();
}
// The weights forward reads (the fp32 master copy on the CPU).
const void* weight(Model& m, size_t offset) { return m.params.data() + offset; }
float* grad(Model& m, size_t offset) { return m.grads.data() + offset; }

const void* lm_head_weight(Model& m) {
  return weight(m, m.config.tie_embeddings() ? m.wte : m.lm_head);
}
float* lm_head_grad(Model& m) { return grad(m, m.config.tie_embeddings() ? m.wte : m.lm_head); }

void norm_forward(Model& m, size_t w, size_t b, const SublayerActs& a, int N) {
  if (is_layernorm(m))
    kb(m).layernorm_forward(act(m, a.normed), stat(m, a.mean), stat(m, a.rstd), act(m, a.input),
                            weight(m, w), weight(m, b), N, m.C, m.config.norm_eps());
  else
    kb(m).rmsnorm_forward(act(m, a.normed), stat(m, a.rstd), act(m, a.input), weight(m, w), N, m.C,
                          m.config.norm_eps());
}

// d_input += backward of the pre-norm, from the gradient of its output in d_normed.
void norm_backward(Model& m, size_t w, size_t b, const SublayerActs& a, int N, void* d_input) {
  if (is_layernorm(m))
    kb(m).layernorm_backward(d_input, grad(m, w), grad(m, b), act(m, m.d_normed), act(m, a.input),
                             weight(m, w), stat(m, a.mean), stat(m, a.rstd), N, m.C,
                             act(m, m.norm_scratch));
  else
    kb(m).rmsnorm_backward(d_input, grad(m, w), act(m, m.d_normed), act(m, a.input), weight(m, w),
                           stat(m, a.rstd), N, m.C, act(m, m.norm_scratch));
}

// h (B, T, C) = Attn(norm1(input)).
void attention_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                int T, void* h) {
  const int N = B * T, C = m.C;
  norm_forward(m, o.norm1_w, o.norm1_b, a, N);
  kb(m).matmul_forward(act(m, a.hidden), act(m, a.normed), weight(m, o.qkv_w), weight(m, o.qkv_b),
                       N, C, 3 * C);
  if (is_rotary(m))
    kb(m).rope_apply(act(m, a.hidden), stat(m, m.rope_cos), stat(m, m.rope_sin), B, T, C, m.H,
                     false);
  kb(m).attention_forward(act(m, a.hidden2), stat(m, a.lse), act(m, a.hidden), B, T, C, m.H,
                          act(m, m.attention_scratch));
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.attn_proj_w), weight(m, o.attn_proj_b), N,
                       C, C);
}

// h (B, T, C) = MLP(norm2(input)).
void mlp_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                          void* h) {
  const int N = B * T, C = m.C, F = m.F;
  norm_forward(m, o.norm2_w, o.norm2_b, a, N);
  kb(m).matmul_forward(act(m, a.hidden), act(m, a.normed), weight(m, o.fc_w), weight(m, o.fc_b), N,
                       C, F);
  kb(m).gelu_forward(act(m, a.hidden2), act(m, a.hidden), static_cast<size_t>(N) * F);
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.mlp_proj_w), weight(m, o.mlp_proj_b), N, F,
                       C);
}

// d_input += Jᵀ dh for the attention sub-layer.
void attention_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                 int T, const void* dh, void* d_input) {
  const int N = B * T, C = m.C;
  void* d_attn = act(m, m.d_hidden2);  // (B, T, C)
  void* d_qkv = act(m, m.d_hidden);    // (B, T, 3C)
  kb(m).matmul_backward(d_attn, grad(m, o.attn_proj_w), grad(m, o.attn_proj_b), dh,
                        act(m, a.hidden2), weight(m, o.attn_proj_w), N, C, C);
  kb(m).attention_backward(d_qkv, d_attn, act(m, a.hidden), act(m, a.hidden2), stat(m, a.lse), B, T,
                           C, m.H, act(m, m.attention_scratch));
  if (is_rotary(m))
    kb(m).rope_apply(d_qkv, stat(m, m.rope_cos), stat(m, m.rope_sin), B, T, C, m.H, true);
  kb(m).matmul_backward(act(m, m.d_normed), grad(m, o.qkv_w), grad(m, o.qkv_b), d_qkv,
                        act(m, a.normed), weight(m, o.qkv_w), N, C, 3 * C);
  norm_backward(m, o.norm1_w, o.norm1_b, a, N, d_input);
}

// d_input += Jᵀ dh for the MLP sub-layer.
void mlp_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                           const void* dh, void* d_input) {
  const int N = B * T, C = m.C, F = m.F;
  void* d_hidden = act(m, m.d_hidden);  // (B, T, F)
  kb(m).matmul_backward(d_hidden, grad(m, o.mlp_proj_w), grad(m, o.mlp_proj_b), dh,
                        act(m, a.hidden2), weight(m, o.mlp_proj_w), N, F, C);
  kb(m).gelu_backward(d_hidden, act(m, a.hidden), d_hidden, static_cast<size_t>(N) * F);
  kb(m).matmul_backward(act(m, m.d_normed), grad(m, o.fc_w), grad(m, o.fc_b), d_hidden,
                        act(m, a.normed), weight(m, o.fc_w), N, C, F);
  norm_backward(m, o.norm2_w, o.norm2_b, a, N, d_input);
}

bool starts_loop_iteration(const Model& m, int position) {
  const int block = m.config.block_layers();
  const int end = m.loop_begin + block * m.config.loops();
  return position >= m.loop_begin && position < end && (position - m.loop_begin) % block == 0;
}

}  // namespace

Model model_layout(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend) {
  Model m;
  m.config = cfg;
  m.backend = backend ? std::move(backend) : make_backend(config::RuntimeConfig::CPU);
  m.V = cfg.vocab_size();
  m.C = cfg.d_model();
  m.H = cfg.n_heads();
  m.F = cfg.d_mlp();
  m.max_T = cfg.max_seq_len();
  m.delay = cfg.residual() == ModelConfig::LADDER ? 2 : 1;

  m.wte = add_tensor(m, "wte", {m.V, m.C}, true);
  if (!is_rotary(m)) m.wpe = add_tensor(m, "wpe", {m.max_T, m.C}, true);
  for (int i = 0; i < cfg.prelude_layers(); ++i) add_layer(m, "prelude." + std::to_string(i) + ".");
  for (int i = 0; i < cfg.block_layers(); ++i) add_layer(m, "block." + std::to_string(i) + ".");
  for (int i = 0; i < cfg.coda_layers(); ++i) add_layer(m, "coda." + std::to_string(i) + ".");
  m.norm_f_w = add_tensor(m, "norm_f.weight", {m.C}, false);
  if (is_layernorm(m)) m.norm_f_b = add_tensor(m, "norm_f.bias", {m.C}, false);
  if (!cfg.tie_embeddings()) m.lm_head = add_tensor(m, "lm_head.weight", {m.V, m.C}, true);
  m.unique_layers = static_cast<int>(m.layers.size());

  const int P = cfg.prelude_layers(), K = cfg.block_layers(), Q = cfg.coda_layers();
  for (int i = 0; i < P; ++i) m.unrolled.push_back(i);
  m.loop_begin = P;
  for (int r = 0; r < cfg.loops(); ++r)
    for (int j = 0; j < K; ++j) m.unrolled.push_back(P + j);
  for (int i = 0; i < Q; ++i) m.unrolled.push_back(P + K + i);
  m.first_use.assign(m.unique_layers, -1);
  for (int p = static_cast<int>(m.unrolled.size()) - 1; p >= 0; --p) m.first_use[m.unrolled[p]] = p;
  return m;
}

Model model_create(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend) {
  Model m = model_layout(cfg, std::move(backend));
  m.params.assign(m.num_params, 0.0f);
  m.grads.assign(m.num_params, 0.0f);
  return m;
}

void model_init(Model& m, uint64_t seed) {
  Rng rng{seed};
  const double std_w = m.config.init_std();
  const double std_proj = std_w / std::sqrt(2.0 * static_cast<double>(m.unrolled.size()));
  for (const ParamTensor& t : m.tensors) {
    float* p = m.params.data() + t.offset;
    const std::string& n = t.name;
    auto ends_with = [&](const std::string& s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    if (t.shape.size() >= 2) {
      const double std = ends_with("proj.weight") ? std_proj : std_w;
      for (size_t i = 0; i < t.size; ++i) p[i] = static_cast<float>(rng.normal() * std);
    } else {
      const bool norm_weight = ends_with("norm1.weight") || ends_with("norm2.weight") ||
                               ends_with("norm_f.weight");
      std::fill(p, p + t.size, norm_weight ? 1.0f : 0.0f);
    }
  }
}

namespace {

size_t floats_for(size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }

// Lays the arena out for (B, T) into m's offsets; returns its size in floats.
size_t plan_arena(Model& m, int B, int T) {
  const size_t N = static_cast<size_t>(B) * T, C = m.C, F = m.F, H = m.H;
  ArenaPlan plan;
  const int positions = static_cast<int>(m.unrolled.size());
  for (int p = 0; p < positions; ++p) {
    for (int sub = 0; sub < 2; ++sub) {
      SublayerActs a{};
      a.input = plan.take(N * C);
      a.normed = plan.take(N * C);
      a.mean = plan.take(N);
      a.rstd = plan.take(N);
      if (sub == 0) {
        a.hidden = plan.take(N * 3 * C);
        a.hidden2 = plan.take(N * C);
        a.lse = plan.take(B * H * T);
      } else {
        a.hidden = plan.take(N * F);
        a.hidden2 = plan.take(N * F);
      }
      m.acts.push_back(a);
    }
  }
  m.stream = plan.take(N * C);
  m.pending = plan.take(m.delay * N * C);
  m.injected = plan.take(N * C);
  m.normed_f = plan.take(N * C);
  m.mean_f = plan.take(N);
  m.rstd_f = plan.take(N);
  m.d_normed_f = plan.take(N * C);
  m.d_stream = plan.take(N * C);
  m.d_pending = plan.take(m.delay * N * C);
  m.d_injected = plan.take(N * C);
  m.d_normed = plan.take(N * C);
  m.d_hidden = plan.take(N * std::max(3 * C, F));
  m.d_hidden2 = plan.take(N * std::max(C, F));
  const int hd = m.C / m.H;
  m.rope_cos = plan.take(static_cast<size_t>(m.max_T) * hd / 2);
  m.rope_sin = plan.take(static_cast<size_t>(m.max_T) * hd / 2);
  const kernels::KernelBackend& be = kb(m);
  m.plan_attention_scratch_bytes = be.attention_scratch_bytes(B, T, m.C, m.H);
  m.attention_scratch = plan.take(floats_for(m.plan_attention_scratch_bytes));
  const int chunk = std::min<int>(m.config.lm_head_chunk(), static_cast<int>(N));
  m.lm_head_scratch = plan.take(floats_for(be.lm_head_scratch_bytes(chunk, m.V)));
  // One scratch serves every norm backward (one kind per model) and the embedding backward.
  const size_t norm_bytes = is_layernorm(m) ? be.layernorm_backward_scratch_bytes(B * T, m.C)
                                            : be.rmsnorm_backward_scratch_bytes(B * T, m.C);
  m.norm_scratch = plan.take(floats_for(norm_bytes));
  m.embedding_scratch = plan.take(floats_for(be.embedding_backward_scratch_bytes(B, T, m.C)));
  return plan.used;
}

}  // namespace

size_t model_arena_floats(const Model& model, int B, int T) {
  Model copy = model_layout(model.config, model.backend);
  return plan_arena(copy, B, T);
}

void model_plan(Model& m, int B, int T) {
  LOOM_CHECK(m.plan_B == 0);  // planned once
  LOOM_CHECK(T <= m.max_T);
  m.plan_B = B;
  m.plan_T = T;
  m.arena.assign(plan_arena(m, B, T), 0.0f);
  const int hd = m.C / m.H;
  const size_t N = static_cast<size_t>(B) * T;
  if (is_rotary(m))
    kb(m).rope_table(stat(m, m.rope_cos), stat(m, m.rope_sin), m.max_T, hd, m.config.rope_theta());
  m.inputs.assign(N, 0);
  m.targets.assign(N, 0);
}

double model_forward(Model& m, const int* inputs, const int* targets, int B, int T,
                     float loss_grad_scale) {
  LOOM_CHECK(B <= m.plan_B && T <= m.plan_T);
  // On the CPU the attention scratch is per thread: the thread count must not have grown.
  LOOM_CHECK(kb(m).attention_scratch_bytes(m.plan_B, m.plan_T, m.C, m.H) <=
             m.plan_attention_scratch_bytes);
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T, d = m.delay;
  const size_t NC = static_cast<size_t>(N) * m.C;
  std::copy(inputs, inputs + N, m.inputs.begin());
  if (targets) std::copy(targets, targets + N, m.targets.begin());

  void* r = act(m, m.stream);
  auto pending_slot = [&](int sublayer) {
    return act_offset(m, act(m, m.pending), (sublayer % d) * NC);
  };
  be.embedding_forward(r, m.inputs.data(), weight(m, m.wte),
                       is_rotary(m) ? nullptr : weight(m, m.wpe), B, T, m.C);

  const int positions = static_cast<int>(m.unrolled.size());
  for (int p = 0; p < positions; ++p) {
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    const int first = 2 * p;
    if (m.config.input_injection() && p == m.loop_begin) {
      // The prelude's output is the stream with its pending sub-layer outputs added.
      void* e = act(m, m.injected);
      be.copy(e, r, NC);
      for (int j = std::max(0, first - d); j < first; ++j) be.vector_add(e, pending_slot(j), NC);
    } else if (m.config.input_injection() && starts_loop_iteration(m, p)) {
      be.vector_add(r, act(m, m.injected), NC);
    }
    for (int sub = 0; sub < 2; ++sub) {
      const int i = first + sub;
      if (i >= d) be.vector_add(r, pending_slot(i - d), NC);
      const SublayerActs& a = m.acts[i];
      be.copy(act(m, a.input), r, NC);
      // Slot i % d held h_{i−d}, just added to r: free for h_i.
      if (sub == 0)
        attention_sublayer_forward(m, o, a, B, T, pending_slot(i));
      else
        mlp_sublayer_forward(m, o, a, B, T, pending_slot(i));
    }
  }
  const int n = 2 * positions;
  for (int j = std::max(0, n - d); j < n; ++j) be.vector_add(r, pending_slot(j), NC);

  if (is_layernorm(m))
    be.layernorm_forward(act(m, m.normed_f), stat(m, m.mean_f), stat(m, m.rstd_f), r,
                         weight(m, m.norm_f_w), weight(m, m.norm_f_b), N, m.C, m.config.norm_eps());
  else
    be.rmsnorm_forward(act(m, m.normed_f), stat(m, m.rstd_f), r, weight(m, m.norm_f_w), N, m.C,
                       m.config.norm_eps());
  if (!targets) return 0.0;
  const bool want_grad = loss_grad_scale > 0.0f;
  const int chunk = std::min<int>(m.config.lm_head_chunk(), N);
  const double loss_sum = be.lm_head_cross_entropy(
      want_grad ? act(m, m.d_normed_f) : nullptr, want_grad ? lm_head_grad(m) : nullptr,
      act(m, m.normed_f), lm_head_weight(m), m.targets.data(), N, m.C, m.V, loss_grad_scale,
      act(m, m.lm_head_scratch), chunk);
  return loss_sum / N;
}

void model_backward(Model& m, int B, int T, const GradsFinalFn& on_grads_final) {
  const kernels::KernelBackend& be = kb(m);
  const int N = B * T, d = m.delay;
  const size_t NC = static_cast<size_t>(N) * m.C;
  void* dr = act(m, m.d_stream);
  void* de = act(m, m.d_injected);
  auto d_pending_slot = [&](int sublayer) {
    return act_offset(m, act(m, m.d_pending), (sublayer % d) * NC);
  };

  be.zero(dr, NC);
  if (is_layernorm(m))
    be.layernorm_backward(dr, grad(m, m.norm_f_w), grad(m, m.norm_f_b), act(m, m.d_normed_f),
                          act(m, m.stream), weight(m, m.norm_f_w), stat(m, m.mean_f),
                          stat(m, m.rstd_f), N, m.C, act(m, m.norm_scratch));
  else
    be.rmsnorm_backward(dr, grad(m, m.norm_f_w), act(m, m.d_normed_f), act(m, m.stream),
                        weight(m, m.norm_f_w), stat(m, m.rstd_f), N, m.C, act(m, m.norm_scratch));
  if (m.config.input_injection()) be.zero(de, NC);
  // The final norm and the untied LM head (its gradient came from the forward) are done.
  auto layer_begin = [&](int u) { return m.layers[u].norm1_w; };
  auto layer_end = [&](int u) { return u + 1 < m.unique_layers ? layer_begin(u + 1) : m.norm_f_w; };
  if (on_grads_final) on_grads_final(m.norm_f_w, m.num_params - m.norm_f_w);

  // Reverse of the forward's final additions: every still-pending output sees dr.
  const int positions = static_cast<int>(m.unrolled.size());
  const int n = 2 * positions;
  for (int j = std::max(0, n - d); j < n; ++j) be.copy(d_pending_slot(j), dr, NC);

  for (int p = positions - 1; p >= 0; --p) {
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    const int first = 2 * p;
    for (int sub = 1; sub >= 0; --sub) {
      const int i = first + sub;
      const SublayerActs& a = m.acts[i];
      if (sub == 0)
        attention_sublayer_backward(m, o, a, B, T, d_pending_slot(i), dr);
      else
        mlp_sublayer_backward(m, o, a, B, T, d_pending_slot(i), dr);
      // Reverse of "r += h_{i−d}": h_{i−d} reached everything r reached from here on.
      if (i >= d) be.copy(d_pending_slot(i - d), dr, NC);
    }
    if (m.config.input_injection() && p == m.loop_begin) {
      // Reverse of e = r + Σ pending: e's gradient flows to the stream and to those outputs.
      be.vector_add(dr, de, NC);
      for (int j = std::max(0, first - d); j < first; ++j) be.vector_add(d_pending_slot(j), de, NC);
    } else if (m.config.input_injection() && starts_loop_iteration(m, p)) {
      be.vector_add(de, dr, NC);
    }
    const int u = m.unrolled[p];
    // A unique layer's gradients are final after the backward of its first application.
    if (on_grads_final && m.first_use[u] == p) on_grads_final(layer_begin(u), layer_end(u) - layer_begin(u));
  }
  be.embedding_backward(grad(m, m.wte), is_rotary(m) ? nullptr : grad(m, m.wpe), dr,
                        m.inputs.data(), B, T, m.C, act(m, m.embedding_scratch));
  if (on_grads_final) on_grads_final(0, layer_begin(0));
}

void model_last_logits(Model& m, int B, int T, float* logits) {
  // The matmul writes activations: float logits need an fp32 backend (host memory, for now).
  LOOM_CHECK(kb(m).activation_bytes() == sizeof(float));
  for (int b = 0; b < B; ++b) {
    const void* row = act_offset(m, act(m, m.normed_f), (static_cast<size_t>(b) * T + T - 1) * m.C);
    kb(m).matmul_forward(logits + static_cast<size_t>(b) * m.V, row, lm_head_weight(m), nullptr, 1,
                         m.C, m.V);
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
