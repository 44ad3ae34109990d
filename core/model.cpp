#include "core/model.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/backend.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor_parallel.h"

namespace loom {
namespace {

using config::ModelConfig;

bool is_layernorm(const Model& m) { return m.config.norm() == ModelConfig::LAYERNORM; }
bool is_rotary(const Model& m) { return m.config.position() == ModelConfig::ROTARY; }

// Adds a tensor of global shape `shape`; with shard_dim ≥ 0 this rank holds its slice of that
// dimension (seen as `groups` groups, each cut into tp slices; see ParamTensor).
size_t add_tensor(Model& m, std::string name, std::vector<int64_t> shape, bool decay,
                  int shard_dim = -1, int groups = 1) {
  std::vector<int64_t> local = shape;
  if (shard_dim >= 0) {
    const int64_t group = shape[shard_dim] / groups;
    // A vocabulary (the only dimension tp need not divide) is padded to a multiple of tp.
    local[shard_dim] = groups * ((group + m.tp.size - 1) / m.tp.size);
  }
  size_t size = 1;
  for (int64_t d : local) size *= static_cast<size_t>(d);
  m.tensors.push_back({std::move(name), std::move(local), m.num_params, size, decay,
                       std::move(shape), shard_dim, groups});
  m.num_params += size;
  return m.tensors.back().offset;
}

void add_layer(Model& m, const std::string& prefix) {
  const int64_t C = m.C, F = m.F;
  const bool ln = is_layernorm(m);
  LayerOffsets o{};
  o.norm1_w = add_tensor(m, prefix + "norm1.weight", {C}, false);
  if (ln) o.norm1_b = add_tensor(m, prefix + "norm1.bias", {C}, false);
  // Column-parallel: this rank's heads' rows of q, k and v.
  o.qkv_w = add_tensor(m, prefix + "attn.qkv.weight", {3 * C, C}, true, 0, 3);
  o.qkv_b = add_tensor(m, prefix + "attn.qkv.bias", {3 * C}, false, 0, 3);
  // Row-parallel: the input columns of this rank's heads; the bias is added once, by tp rank 0.
  o.attn_proj_w = add_tensor(m, prefix + "attn.proj.weight", {C, C}, true, 1);
  o.attn_proj_b = add_tensor(m, prefix + "attn.proj.bias", {C}, false);
  o.norm2_w = add_tensor(m, prefix + "norm2.weight", {C}, false);
  if (ln) o.norm2_b = add_tensor(m, prefix + "norm2.bias", {C}, false);
  o.fc_w = add_tensor(m, prefix + "mlp.fc.weight", {F, C}, true, 0);
  o.fc_b = add_tensor(m, prefix + "mlp.fc.bias", {F}, false, 0);
  o.mlp_proj_w = add_tensor(m, prefix + "mlp.proj.weight", {C, F}, true, 1);
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

// A row-parallel layer's bias: added by tp rank 0 only, so the all-reduced sum holds it once.
const void* row_parallel_bias(Model& m, size_t offset) {
  return m.tp.rank == 0 ? weight(m, offset) : nullptr;
}

// Starts completing a sub-layer's partial sum x (n activations) over the tensor-parallel group;
// null when tp = 1 (nothing to complete).
WorkPtr tp_sum_start(Model& m, void* x, size_t n) {
  if (!m.tp.comm) return nullptr;
  // Host fp32 activations (the MPI backend); a device backend brings its own communicator.
  LOOM_CHECK(kb(m).activation_bytes() == sizeof(float));
  return m.tp.comm->all_reduce_async(x, n, DataType::kFloat32, ReduceOp::kSum);
}

// After a failed collective (its error already thrown to the caller) a later forward or backward
// must not leave the operations still in flight writing into the arena: they are waited for
// (after a failure they complete at once, failed) and cleared.
void tp_drain(Model& m) {
  for (std::vector<WorkPtr>* works : {&m.pending_work, &m.d_pending_work})
    for (WorkPtr& work : *works) {
      if (!work) continue;
      try {
        work->wait();
      } catch (const CommError&) {
      }
      work.reset();
    }
}

// Waits for (and clears) an all-reduce started by tp_sum_start; the time blocked is exposed
// communication.
void tp_wait(Model& m, WorkPtr& work) {
  if (!work) return;
  const auto start = std::chrono::steady_clock::now();
  work->wait();
  m.tp_wait_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  work.reset();
}

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

// d_input += backward of the pre-norm, from the (complete) gradient of its output.
void norm_backward(Model& m, size_t w, size_t b, const SublayerActs& a, int N, const void* d_normed,
                   void* d_input) {
  if (is_layernorm(m))
    kb(m).layernorm_backward(d_input, grad(m, w), grad(m, b), d_normed, act(m, a.input),
                             weight(m, w), stat(m, a.mean), stat(m, a.rstd), N, m.C,
                             act(m, m.norm_scratch));
  else
    kb(m).rmsnorm_backward(d_input, grad(m, w), d_normed, act(m, a.input), weight(m, w),
                           stat(m, a.rstd), N, m.C, act(m, m.norm_scratch));
}

// h (B, T, C) = Attn(norm1(input)): this rank's heads' part of it (all of it when tp = 1).
void attention_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                int T, void* h) {
  const int N = B * T, C = m.C, Cl = m.Cl;
  norm_forward(m, o.norm1_w, o.norm1_b, a, N);
  kb(m).matmul_forward(act(m, a.hidden), act(m, a.normed), weight(m, o.qkv_w), weight(m, o.qkv_b),
                       N, C, 3 * Cl);
  if (is_rotary(m))
    kb(m).rope_apply(act(m, a.hidden), stat(m, m.rope_cos), stat(m, m.rope_sin), B, T, Cl, m.Hl,
                     false);
  kb(m).attention_forward(act(m, a.hidden2), stat(m, a.lse), act(m, a.hidden), B, T, Cl, m.Hl,
                          act(m, m.attention_scratch));
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.attn_proj_w),
                       row_parallel_bias(m, o.attn_proj_b), N, Cl, C);
}

// h (B, T, C) = MLP(norm2(input)): this rank's part of it.
void mlp_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                          void* h) {
  const int N = B * T, C = m.C, Fl = m.Fl;
  norm_forward(m, o.norm2_w, o.norm2_b, a, N);
  kb(m).matmul_forward(act(m, a.hidden), act(m, a.normed), weight(m, o.fc_w), weight(m, o.fc_b), N,
                       C, Fl);
  kb(m).gelu_forward(act(m, a.hidden2), act(m, a.hidden), static_cast<size_t>(N) * Fl);
  kb(m).matmul_forward(h, act(m, a.hidden2), weight(m, o.mlp_proj_w),
                       row_parallel_bias(m, o.mlp_proj_b), N, Fl, C);
}

// d_normed (B, T, C) = this rank's part of the gradient of the attention sub-layer's pre-norm
// output, from dh (complete on every rank) — overwritten. The pre-norm's own backward waits
// until the tensor-parallel sum has completed it (`finish` in model_backward).
void attention_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                 int T, const void* dh, void* d_normed) {
  const int N = B * T, C = m.C, Cl = m.Cl;
  void* d_attn = act(m, m.d_hidden2);  // (B, T, Cl)
  void* d_qkv = act(m, m.d_hidden);    // (B, T, 3Cl)
  kb(m).matmul_backward(d_attn, grad(m, o.attn_proj_w), grad(m, o.attn_proj_b), dh,
                        act(m, a.hidden2), weight(m, o.attn_proj_w), N, Cl, C);
  kb(m).attention_backward(d_qkv, d_attn, act(m, a.hidden), act(m, a.hidden2), stat(m, a.lse), B, T,
                           Cl, m.Hl, act(m, m.attention_scratch));
  if (is_rotary(m))
    kb(m).rope_apply(d_qkv, stat(m, m.rope_cos), stat(m, m.rope_sin), B, T, Cl, m.Hl, true);
  kb(m).matmul_backward(d_normed, grad(m, o.qkv_w), grad(m, o.qkv_b), d_qkv, act(m, a.normed),
                        weight(m, o.qkv_w), N, C, 3 * Cl);
}

// The MLP's counterpart of attention_sublayer_backward.
void mlp_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                           const void* dh, void* d_normed) {
  const int N = B * T, C = m.C, Fl = m.Fl;
  void* d_hidden = act(m, m.d_hidden);  // (B, T, Fl)
  kb(m).matmul_backward(d_hidden, grad(m, o.mlp_proj_w), grad(m, o.mlp_proj_b), dh,
                        act(m, a.hidden2), weight(m, o.mlp_proj_w), N, Fl, C);
  kb(m).gelu_backward(d_hidden, act(m, a.hidden), d_hidden, static_cast<size_t>(N) * Fl);
  kb(m).matmul_backward(d_normed, grad(m, o.fc_w), grad(m, o.fc_b), d_hidden, act(m, a.normed),
                        weight(m, o.fc_w), N, C, Fl);
}

bool starts_loop_iteration(const Model& m, int position) {
  const int block = m.config.block_layers();
  const int end = m.loop_begin + block * m.config.loops();
  return position >= m.loop_begin && position < end && (position - m.loop_begin) % block == 0;
}

// With input injection, the sub-layer at which the prelude's output e is taken: right after the
// prelude's last output h_{P−1} joins the stream (P = the loop's first sub-layer), which is when
// sub-layer P − 1 + delay reads it, so no all-reduce has to be waited on early. −1 without.
int injection_sublayer(const Model& m) {
  return m.config.input_injection() ? 2 * m.loop_begin + m.delay - 1 : -1;
}

}  // namespace

Model model_layout(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp) {
  Model m;
  m.config = cfg;
  m.backend = backend ? std::move(backend) : make_backend(config::RuntimeConfig::CPU);
  m.V = cfg.vocab_size();
  m.C = cfg.d_model();
  m.H = cfg.n_heads();
  m.F = cfg.d_mlp();
  m.max_T = cfg.max_seq_len();
  m.delay = cfg.residual() == ModelConfig::LADDER ? 2 : 1;
  LOOM_CHECK(tp.size >= 1 && tp.rank >= 0 && tp.rank < tp.size);
  // No comm: a layout for planning. The shard arithmetic takes the group rank as tp coordinate.
  LOOM_CHECK(!tp.comm || (tp.comm->size() == tp.size && tp.comm->rank() == tp.rank));
  LOOM_CHECK(m.H % tp.size == 0 && m.F % tp.size == 0);  // validate_config says so to users
  if (tp.size == 1) tp.comm = nullptr;
  m.tp = tp;
  m.Hl = m.H / tp.size;
  m.Cl = m.Hl * (m.C / m.H);
  m.Fl = m.F / tp.size;
  m.vocab = vocab_shard(m.V, tp.size, tp.rank);
  m.pending_work.resize(m.delay);
  m.d_pending_work.resize(m.delay);

  // Vocab-parallel: this rank's rows of the padded vocabulary.
  m.wte = add_tensor(m, "wte", {m.V, m.C}, true, 0);
  if (!is_rotary(m)) m.wpe = add_tensor(m, "wpe", {m.max_T, m.C}, true);
  for (int i = 0; i < cfg.prelude_layers(); ++i) add_layer(m, "prelude." + std::to_string(i) + ".");
  for (int i = 0; i < cfg.block_layers(); ++i) add_layer(m, "block." + std::to_string(i) + ".");
  for (int i = 0; i < cfg.coda_layers(); ++i) add_layer(m, "coda." + std::to_string(i) + ".");
  m.norm_f_w = add_tensor(m, "norm_f.weight", {m.C}, false);
  if (is_layernorm(m)) m.norm_f_b = add_tensor(m, "norm_f.bias", {m.C}, false);
  if (!cfg.tie_embeddings()) m.lm_head = add_tensor(m, "lm_head.weight", {m.V, m.C}, true, 0);
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

Model model_create(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp) {
  Model m = model_layout(cfg, std::move(backend), tp);
  m.params.assign(m.num_params, 0.0f);
  m.grads.assign(m.num_params, 0.0f);
  return m;
}

void model_init(Model& m, uint64_t seed) {
  Rng rng{seed};
  const double std_w = m.config.init_std();
  const double std_proj = std_w / std::sqrt(2.0 * static_cast<double>(m.unrolled.size()));
  std::vector<float> whole;  // one global tensor at a time
  for (const ParamTensor& t : m.tensors) {
    whole.resize(tensor_global_size(t));
    const std::string& n = t.name;
    auto ends_with = [&](const std::string& s) {
      return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
    };
    if (t.shape.size() >= 2) {
      const double std = ends_with("proj.weight") ? std_proj : std_w;
      for (float& x : whole) x = static_cast<float>(rng.normal() * std);
    } else {
      const bool norm_weight = ends_with("norm1.weight") || ends_with("norm2.weight") ||
                               ends_with("norm_f.weight");
      std::fill(whole.begin(), whole.end(), norm_weight ? 1.0f : 0.0f);
    }
    tensor_shard_extract(t, m.tp.rank, whole.data(), m.params.data() + t.offset);
  }
}

namespace {

size_t floats_for(size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }

// Lays the arena out for (B, T) into m's offsets; returns its size in floats.
size_t plan_arena(Model& m, int B, int T) {
  const size_t N = static_cast<size_t>(B) * T, C = m.C, Cl = m.Cl, F = m.Fl, H = m.Hl;
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
        a.hidden = plan.take(N * 3 * Cl);
        a.hidden2 = plan.take(N * Cl);
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
  m.d_normed = plan.take(m.delay * N * C);
  m.d_hidden = plan.take(N * std::max(3 * Cl, F));
  m.d_hidden2 = plan.take(N * std::max(Cl, F));
  const int hd = m.C / m.H;
  m.rope_cos = plan.take(static_cast<size_t>(m.max_T) * hd / 2);
  m.rope_sin = plan.take(static_cast<size_t>(m.max_T) * hd / 2);
  const kernels::KernelBackend& be = kb(m);
  m.plan_attention_scratch_bytes = be.attention_scratch_bytes(B, T, m.Cl, m.Hl);
  m.attention_scratch = plan.take(floats_for(m.plan_attention_scratch_bytes));
  const int chunk = std::min<int>(m.config.lm_head_chunk(), static_cast<int>(N));
  m.lm_head_scratch = plan.take(floats_for(
      m.tp.size > 1 ? vocab_parallel_scratch_bytes(be, chunk, m.vocab.rows)
                : be.lm_head_scratch_bytes(chunk, m.V)));
  // One scratch serves every norm backward (one kind per model) and the embedding backward.
  const size_t norm_bytes = is_layernorm(m) ? be.layernorm_backward_scratch_bytes(B * T, m.C)
                                            : be.rmsnorm_backward_scratch_bytes(B * T, m.C);
  m.norm_scratch = plan.take(floats_for(norm_bytes));
  m.embedding_scratch = plan.take(floats_for(be.embedding_backward_scratch_bytes(B, T, m.C)));
  return plan.used;
}

}  // namespace

size_t model_arena_floats(const Model& model, int B, int T) {
  Model copy = model_layout(model.config, model.backend, model.tp);
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
  LOOM_CHECK(m.tp.size == 1 || m.tp.comm);
  tp_drain(m);
  // On the CPU the attention scratch is per thread: the thread count must not have grown.
  LOOM_CHECK(kb(m).attention_scratch_bytes(m.plan_B, m.plan_T, m.Cl, m.Hl) <=
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
  // h_j, complete: its tensor-parallel sum has arrived.
  auto pending_output = [&](int sublayer) {
    tp_wait(m, m.pending_work[sublayer % d]);
    return pending_slot(sublayer);
  };
  // Each rank looks up its vocabulary rows (zeros for the others); tp rank 0 adds positions.
  be.embedding_forward(r, m.inputs.data(), weight(m, m.wte),
                       is_rotary(m) ? nullptr : row_parallel_bias(m, m.wpe), B, T, m.C,
                       m.vocab.vocab_begin, m.vocab.rows);
  WorkPtr embedded = tp_sum_start(m, r, NC);
  tp_wait(m, embedded);

  const int positions = static_cast<int>(m.unrolled.size());
  const int injection = injection_sublayer(m);
  for (int p = 0; p < positions; ++p) {
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    const int first = 2 * p;
    if (m.config.input_injection() && p != m.loop_begin && starts_loop_iteration(m, p))
      be.vector_add(r, act(m, m.injected), NC);
    for (int sub = 0; sub < 2; ++sub) {
      const int i = first + sub;
      // Ladder: h_{i−2} is waited on here, after h_{i−1}'s all-reduce was started, so each
      // all-reduce runs while the next sub-layer computes.
      if (i >= d) be.vector_add(r, pending_output(i - d), NC);
      if (i == injection) be.copy(act(m, m.injected), r, NC);
      const SublayerActs& a = m.acts[i];
      be.copy(act(m, a.input), r, NC);
      // Slot i % d held h_{i−d}, just added to r: free for h_i.
      if (sub == 0)
        attention_sublayer_forward(m, o, a, B, T, pending_slot(i));
      else
        mlp_sublayer_forward(m, o, a, B, T, pending_slot(i));
      m.pending_work[i % d] = tp_sum_start(m, pending_slot(i), NC);
    }
  }
  const int n = 2 * positions;
  for (int j = std::max(0, n - d); j < n; ++j) be.vector_add(r, pending_output(j), NC);

  if (is_layernorm(m))
    be.layernorm_forward(act(m, m.normed_f), stat(m, m.mean_f), stat(m, m.rstd_f), r,
                         weight(m, m.norm_f_w), weight(m, m.norm_f_b), N, m.C, m.config.norm_eps());
  else
    be.rmsnorm_forward(act(m, m.normed_f), stat(m, m.rstd_f), r, weight(m, m.norm_f_w), N, m.C,
                       m.config.norm_eps());
  if (!targets) return 0.0;
  const bool want_grad = loss_grad_scale > 0.0f;
  const int chunk = std::min<int>(m.config.lm_head_chunk(), N);
  double loss_sum = 0.0;
  if (m.tp.comm) {
    // Vocabulary-parallel: full-vocabulary logits never exist on one rank; d_normed_f comes
    // back complete (all-reduced).
    loss_sum = vocab_parallel_cross_entropy(
        be, *m.tp.comm, want_grad ? act(m, m.d_normed_f) : nullptr,
        want_grad ? lm_head_grad(m) : nullptr, act(m, m.normed_f), lm_head_weight(m),
        m.targets.data(), N, m.C, m.vocab, loss_grad_scale, act(m, m.lm_head_scratch), chunk,
        &m.tp_wait_seconds);
  } else {
    loss_sum = be.lm_head_cross_entropy(
        want_grad ? act(m, m.d_normed_f) : nullptr, want_grad ? lm_head_grad(m) : nullptr,
        act(m, m.normed_f), lm_head_weight(m), m.targets.data(), N, m.C, m.V, loss_grad_scale,
        act(m, m.lm_head_scratch), chunk);
  }
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
  auto d_normed_slot = [&](int sublayer) {
    return act_offset(m, act(m, m.d_normed), (sublayer % d) * NC);
  };
  tp_drain(m);

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

  const int positions = static_cast<int>(m.unrolled.size());
  const int n = 2 * positions;
  const int injection = injection_sublayer(m);

  // Completes sub-layer j's backward: waits for its input gradient's tensor-parallel sum, runs
  // its pre-norm's backward into dr — which then is the gradient of the stream as sub-layer j
  // read it — and reverses what the forward did to the stream right before sub-layer j.
  auto finish = [&](int j) {
    const int p = j / 2;
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    tp_wait(m, m.d_pending_work[j % d]);
    if (j % 2 == 0)
      norm_backward(m, o.norm1_w, o.norm1_b, m.acts[j], N, d_normed_slot(j), dr);
    else
      norm_backward(m, o.norm2_w, o.norm2_b, m.acts[j], N, d_normed_slot(j), dr);
    if (j == injection) be.vector_add(dr, de, NC);  // reverse of e = r
    if (j % 2 != 0) return;
    if (m.config.input_injection() && p != m.loop_begin && starts_loop_iteration(m, p))
      be.vector_add(de, dr, NC);  // reverse of r += e
    const int u = m.unrolled[p];
    // A unique layer's gradients are final after the backward of its first application.
    if (on_grads_final && m.first_use[u] == p)
      on_grads_final(layer_begin(u), layer_end(u) - layer_begin(u));
  };

  // Reverse of the forward's final additions: every still-pending output sees dr.
  for (int j = std::max(0, n - d); j < n; ++j) be.copy(d_pending_slot(j), dr, NC);
  // Sub-layer i's output h_i joined the stream right before sub-layer i + d, so its gradient is
  // dr once sub-layer i + d is finished. Sub-layer i's own input-gradient all-reduce is started
  // after its compute and waited on only when sub-layer i − d begins: with the ladder (d = 2)
  // it runs during sub-layer i − 1's backward.
  for (int i = n - 1; i >= -d; --i) {
    if (i + d < n) finish(i + d);
    if (i < 0) continue;
    if (i + d < n) be.copy(d_pending_slot(i), dr, NC);
    const int p = i / 2;
    const LayerOffsets& o = m.layers[m.unrolled[p]];
    if (i % 2 == 0)
      attention_sublayer_backward(m, o, m.acts[i], B, T, d_pending_slot(i), d_normed_slot(i));
    else
      mlp_sublayer_backward(m, o, m.acts[i], B, T, d_pending_slot(i), d_normed_slot(i));
    m.d_pending_work[i % d] = tp_sum_start(m, d_normed_slot(i), NC);
  }
  be.embedding_backward(grad(m, m.wte), is_rotary(m) ? nullptr : grad(m, m.wpe), dr,
                        m.inputs.data(), B, T, m.C, m.vocab.vocab_begin, m.vocab.rows,
                        act(m, m.embedding_scratch));
  if (on_grads_final) on_grads_final(0, layer_begin(0));
}

void model_last_logits(Model& m, int B, int T, float* logits) {
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
