// The model's parameter layout (which tensors this rank holds, where in the flat buffer), its
// initialisation, and the activation arena's plan.
#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "base/error.h"
#include "core/model_internal.h"
#include "base/rng.h"
#include "core/param_shards.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

using config::ModelConfig;
using namespace model_detail;

// Builds the tensor list in global order, keeping the tensors this pipeline rank is among the
// `holders` of.
struct LayoutBuilder {
  Model& m;
  // Pipeline ranks holding a tensor of this role, unique layer and (kLoopLora) iteration.
  std::function<std::vector<int>(ParamRole, int, int)> holders;
  int global_index = 0;
  int iteration = -1;  // of the kLoopLora tensors being added

  // Adds a tensor of global shape `shape`; with shard_dim ≥ 0 this rank holds its slice of that
  // dimension (seen as groups of the given sizes, or one, each cut into tp slices; see
  // ParamTensor). Returns its offset, or 0 when this pipeline rank does not hold it.
  size_t add(std::string name, std::vector<int64_t> shape, bool decay, ParamRole role, int layer,
             ParamInit init, int shard_dim = -1, std::vector<int64_t> groups = {}) {
    const int index = global_index++;
    std::vector<int> held_by = holders(role, layer, iteration);
    if (std::find(held_by.begin(), held_by.end(), m.par.stage.rank) == held_by.end()) return 0;
    std::vector<int64_t> local = shape;
    if (shard_dim >= 0) {
      // A vocabulary (the only dimension tp need not divide) is padded to a multiple of tp.
      const int64_t tp = m.par.tp.size;
      local[shard_dim] = 0;
      for (int64_t group : groups.empty() ? std::vector<int64_t>{shape[shard_dim]} : groups)
        local[shard_dim] += (group + tp - 1) / tp;
    }
    size_t size = 1;
    for (int64_t d : local) size *= static_cast<size_t>(d);
    m.layout.tensors.push_back({std::move(name), std::move(local), m.layout.num_params, size, decay,
                                std::move(shape), shard_dim, std::move(groups), role, layer, init,
                                index, std::move(held_by), iteration});
    m.layout.num_params += size;
    return m.layout.tensors.back().offset;
  }

  // A bias of the given shape when the model has biases (model.bias), else kNoTensor.
  size_t add_bias(const std::string& name, int64_t size, int layer, int shard_dim = -1,
                  std::vector<int64_t> groups = {}) {
    if (!m.spec.config.bias()) return kNoTensor;
    return add(name, {size}, false, ParamRole::kLayer, layer, ParamInit::kZeros, shard_dim,
               std::move(groups));
  }

  void add_layer(const std::string& prefix, int u) {
    const int64_t C = m.spec.C, F = m.spec.F,
                  Ckv = static_cast<int64_t>(m.spec.Hkv) * (C / m.spec.H);
    const bool ln = is_layernorm(m);
    const ParamRole L = ParamRole::kLayer;
    LayerOffsets o{};
    o.norm1_b = o.norm2_b = kNoTensor;
    o.norm1_w = add(prefix + "norm1.weight", {C}, false, L, u, ParamInit::kOnes);
    if (ln) o.norm1_b = add(prefix + "norm1.bias", {C}, false, L, u, ParamInit::kZeros);
    // Column-parallel: this rank's heads' rows of q, and of its key/value heads' k and v.
    const std::vector<int64_t> qkv = {C, Ckv, Ckv};
    o.qkv_w =
        add(prefix + "attn.qkv.weight", {C + 2 * Ckv, C}, true, L, u, ParamInit::kNormal, 0, qkv);
    o.qkv_b = add_bias(prefix + "attn.qkv.bias", C + 2 * Ckv, u, 0, qkv);
    // Row-parallel: the input columns of this rank's heads; the bias is added once, by tp rank 0.
    o.attn_proj_w =
        add(prefix + "attn.proj.weight", {C, C}, true, L, u, ParamInit::kNormalScaled, 1);
    o.attn_proj_b = add_bias(prefix + "attn.proj.bias", C, u);
    o.norm2_w = add(prefix + "norm2.weight", {C}, false, L, u, ParamInit::kOnes);
    if (ln) o.norm2_b = add(prefix + "norm2.bias", {C}, false, L, u, ParamInit::kZeros);
    // SwiGLU's gate and up projections are one matrix, gate rows first, each cut over tp.
    const std::vector<int64_t> fc =
        is_swiglu(m) ? std::vector<int64_t>{F, F} : std::vector<int64_t>{F};
    const int64_t fc_rows = is_swiglu(m) ? 2 * F : F;
    o.fc_w = add(prefix + "mlp.fc.weight", {fc_rows, C}, true, L, u, ParamInit::kNormal, 0, fc);
    o.fc_b = add_bias(prefix + "mlp.fc.bias", fc_rows, u, 0, fc);
    o.mlp_proj_w =
        add(prefix + "mlp.proj.weight", {C, F}, true, L, u, ParamInit::kNormalScaled, 1);
    o.mlp_proj_b = add_bias(prefix + "mlp.proj.bias", C, u);
    m.layout.layers.push_back(o);
  }

  // One loop iteration's LoRA factors of block layer u (prefix "block.j."), after its weights:
  // column-parallel layers (qkv, fc) cut B by rows as their weight, row-parallel ones (the
  // projections) cut A by columns; the other factor is whole on every tensor-parallel rank.
  LayerOffsets add_lora(const std::string& prefix, int u, int loop) {
    const int64_t C = m.spec.C, F = m.spec.F, r = m.spec.config.loop_lora_rank();
    const int64_t Ckv = static_cast<int64_t>(m.spec.Hkv) * (C / m.spec.H);
    const ParamRole L = ParamRole::kLoopLora;
    iteration = loop;
    auto factors = [&](const std::string& linear, int64_t in, int64_t out, bool column,
                       std::vector<int64_t> groups) {
      const std::string at = prefix + linear + ".lora." + std::to_string(loop);
      LoraFactors f;
      f.a = add(at + ".A", {r, in}, true, L, u, ParamInit::kNormal, column ? -1 : 1);
      f.b = add(at + ".B", {out, r}, true, L, u, ParamInit::kZeros, column ? 0 : -1,
                column ? std::move(groups) : std::vector<int64_t>{});
      return f;
    };
    const int64_t fc_rows = is_swiglu(m) ? 2 * F : F;
    LayerOffsets o{};
    o.qkv_lora = factors("attn.qkv", C, C + 2 * Ckv, true, {C, Ckv, Ckv});
    o.attn_proj_lora = factors("attn.proj", C, C, false, {});
    o.fc_lora = factors("mlp.fc", C, fc_rows, true,
                        is_swiglu(m) ? std::vector<int64_t>{F, F} : std::vector<int64_t>{F});
    o.mlp_proj_lora = factors("mlp.proj", F, C, false, {});
    iteration = -1;
    return o;
  }
};

}  // namespace

// The unrolled list at m.loops iterations, this rank's chunks (with their segments under the
// model's recomputation policy) and where it first runs each unique layer.
void model_detail::lay_out_chunks(Model& m) {
  const ModelConfig& cfg = m.spec.config;
  const int P = cfg.prelude_layers(), K = cfg.block_layers(), Q = cfg.coda_layers();
  m.spec.unrolled.clear();
  m.par.chunks.clear();
  for (int i = 0; i < P; ++i) m.spec.unrolled.push_back(i);
  m.spec.loop_begin = P;
  for (int r = 0; r < m.spec.loops; ++r)
    for (int j = 0; j < K; ++j) m.spec.unrolled.push_back(P + j);
  for (int i = 0; i < Q; ++i) m.spec.unrolled.push_back(P + K + i);
  const int n = static_cast<int>(m.spec.unrolled.size());
  // A single stage runs the whole list, however deep (model_set_loops).
  if (m.par.stage.plan.pp == 1 && m.par.stage.plan.virtual_stages == 1)
    m.par.stage.plan = {1, 1, {0, n}};
  LOOM_CHECK(m.par.stage.plan.positions() == n && m.par.stage.rank < m.par.stage.plan.pp);
  m.par.first_use.assign(m.spec.unique_layers, -1);
  for (int piece : stage_plan_pieces(m.par.stage.plan, m.par.stage.rank)) {
    ModelChunk c;
    c.begin = m.par.stage.plan.bounds[piece];
    c.end = m.par.stage.plan.bounds[piece + 1];
    c.piece = piece;
    c.first = c.begin == 0;
    c.last = c.end == n;
    c.injected_in = boundary_carries_injected(m, 2 * c.begin);
    c.injected_out = !c.last && boundary_carries_injected(m, 2 * c.end);
    for (int p = c.begin; p < c.end; ++p)
      if (m.par.first_use[m.spec.unrolled[p]] < 0) m.par.first_use[m.spec.unrolled[p]] = p;
    plan_segments(m, c);
    m.par.chunks.push_back(std::move(c));
  }
}

namespace {

// Pipeline ranks that hold a tensor of this role (and unique layer; for a LoRA factor, the rank
// that runs its iteration of that layer).
std::vector<int> holders_of(const Model& m, ParamRole role, int layer, int iteration) {
  const StagePlan& plan = m.par.stage.plan;
  const int last_rank = stage_plan_rank_of(plan, plan.pieces() - 1);
  std::vector<int> out;
  switch (role) {
    case ParamRole::kTokenEmbedding:
      out.push_back(0);
      if (m.spec.config.tie_embeddings() && last_rank != 0) out.push_back(last_rank);
      break;
    case ParamRole::kPositionEmbedding:
    case ParamRole::kRouter:
      out.push_back(0);
      break;  // routed models run with pp = 1
    case ParamRole::kFinalNorm:
    case ParamRole::kLmHead: out.push_back(last_rank); break;
    case ParamRole::kLayer:
      for (int r = 0; r < plan.pp; ++r)
        if (stage_plan_runs_layer(m.spec.config, plan, r, layer)) out.push_back(r);
      break;
    case ParamRole::kLoopLora: {
      const int position = m.spec.loop_begin + iteration * m.spec.config.block_layers() + layer -
                           m.spec.config.prelude_layers();
      for (int r = 0; r < plan.pp; ++r)
        for (int piece : stage_plan_pieces(plan, r))
          if (position >= plan.bounds[piece] && position < plan.bounds[piece + 1]) out.push_back(r);
      break;
    }
  }
  return out;
}

// Ranges of each unique layer's tensors, of the embeddings and of the head.
void lay_out_ranges(Model& m) {
  m.layout.layer_ranges.assign(m.spec.unique_layers, ShardRange{});
  m.layout.embedding_range = m.layout.head_range = ShardRange{};
  for (const ParamTensor& t : m.layout.tensors) {
    // The router's gradients are final once the whole loop's backward is done: it is reported
    // with the embedding, which comes right after.
    const bool layer = t.role == ParamRole::kLayer || t.role == ParamRole::kLoopLora;
    ShardRange& r = layer ? m.layout.layer_ranges[t.layer]
                    : (t.role == ParamRole::kFinalNorm || t.role == ParamRole::kLmHead)
                        ? m.layout.head_range
                        : m.layout.embedding_range;
    if (r.size() == 0) r = {t.offset, t.offset};
    LOOM_CHECK(r.end == t.offset);  // contiguous
    r.end = t.offset + t.size;
  }
}

}  // namespace

Model model_layout(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp, PipelineStage stage, SequenceParallel sp) {
  Model m;
  m.spec.config = cfg;
  m.buf.backend = backend ? std::move(backend) : make_cpu_backend();
  m.spec.V = cfg.vocab_size();
  m.spec.C = cfg.d_model();
  m.spec.H = cfg.n_heads();
  m.spec.F = cfg.d_mlp();
  m.spec.Hkv = model_kv_heads(cfg);
  m.spec.max_T = cfg.max_seq_len();
  m.spec.delay = cfg.residual() == ModelConfig::LADDER ? 2 : 1;
  LOOM_CHECK(tp.size >= 1 && tp.rank >= 0 && tp.rank < tp.size);
  // No comm: a layout for planning. The shard arithmetic takes the group rank as tp coordinate.
  LOOM_CHECK(!tp.comm || (tp.comm->size() == tp.size && tp.comm->rank() == tp.rank));
  LOOM_CHECK(m.spec.H % tp.size == 0 && m.spec.F % tp.size == 0 &&
             m.spec.Hkv % tp.size == 0);  // validate_config says so to users
  if (tp.size == 1) tp.comm = tp.gather_comm = nullptr;
  tp.sequence = tp.sequence && tp.size > 1;
  LOOM_CHECK(!tp.sequence || !model_routed(cfg));  // validate_parallel says so to users
  m.par.tp = tp;
  m.par.tp.type = activation_data_type(*m.buf.backend);
  LOOM_CHECK(sp.size >= 1 && sp.rank >= 0 && sp.rank < sp.size);
  LOOM_CHECK(!sp.comm || (sp.comm->size() == sp.size && sp.comm->rank() == sp.rank));
  if (sp.size == 1) sp.comm = nullptr;
  m.par.sp = sp;
  m.par.ring = RingAttention(sp.comm, sp.layout);
  m.par.ulysses = {sp.comm, sp.layout};
  LOOM_CHECK(sp.method == SequenceMethod::kRing ||
             (m.spec.H / tp.size % sp.size == 0 && m.spec.Hkv / tp.size % sp.size == 0));
  m.par.stage = std::move(stage);
  m.par.Hl = m.spec.H / tp.size;
  m.par.Cl = m.par.Hl * (m.spec.C / m.spec.H);
  m.par.Fl = m.spec.F / tp.size;
  m.par.Hkvl = m.spec.Hkv / tp.size;
  m.par.Ckvl = m.par.Hkvl * (m.spec.C / m.spec.H);
  m.par.vocab = vocab_shard(m.spec.V, tp.size, tp.rank);
  m.par.tp_sums.forward.resize(m.spec.delay);
  m.par.tp_sums.backward.resize(m.spec.delay);
  m.spec.unique_layers = cfg.prelude_layers() + cfg.block_layers() + cfg.coda_layers();
  m.spec.loops = m.spec.plan_loops_min = m.spec.plan_loops_max = cfg.loops();
  lay_out_chunks(m);

  LayoutBuilder b{m, [&m](ParamRole role, int layer, int iteration) {
                    return holders_of(m, role, layer, iteration);
                  }};
  // Vocab-parallel: this rank's rows of the padded vocabulary.
  m.layout.wte = b.add("wte", {m.spec.V, m.spec.C}, true, ParamRole::kTokenEmbedding, -1,
                       ParamInit::kNormal, 0);
  m.layout.has_wte = !m.layout.tensors.empty();
  if (!is_rotary(m))
    m.layout.wpe = b.add("wpe", {m.spec.max_T, m.spec.C}, true, ParamRole::kPositionEmbedding, -1,
                         ParamInit::kNormal);
  if (model_routed(cfg))
    m.layout.router = b.add("loop.router.weight", {cfg.loops(), m.spec.C}, true, ParamRole::kRouter,
                            -1, ParamInit::kNormal);
  for (int i = 0; i < cfg.prelude_layers(); ++i)
    b.add_layer("prelude." + std::to_string(i) + ".", i);
  if (cfg.loop_lora_rank() > 0)
    m.layout.lora.assign(cfg.loops(), std::vector<LayerOffsets>(cfg.block_layers()));
  for (int i = 0; i < cfg.block_layers(); ++i) {
    const std::string prefix = "block." + std::to_string(i) + ".";
    b.add_layer(prefix, cfg.prelude_layers() + i);
    for (int loop = 0; loop < cfg.loops() && cfg.loop_lora_rank() > 0; ++loop)
      m.layout.lora[loop][i] = b.add_lora(prefix, cfg.prelude_layers() + i, loop);
  }
  for (int i = 0; i < cfg.coda_layers(); ++i)
    b.add_layer("coda." + std::to_string(i) + ".", cfg.prelude_layers() + cfg.block_layers() + i);
  m.layout.norm_f_w =
      b.add("norm_f.weight", {m.spec.C}, false, ParamRole::kFinalNorm, -1, ParamInit::kOnes);
  if (is_layernorm(m))
    m.layout.norm_f_b =
        b.add("norm_f.bias", {m.spec.C}, false, ParamRole::kFinalNorm, -1, ParamInit::kZeros);
  if (!cfg.tie_embeddings())
    m.layout.lm_head = b.add("lm_head.weight", {m.spec.V, m.spec.C}, true, ParamRole::kLmHead, -1,
                             ParamInit::kNormal, 0);
  m.layout.global_tensors = static_cast<size_t>(b.global_index);
  lay_out_ranges(m);
  return m;
}

Model model_create(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp, PipelineStage stage, SequenceParallel sp,
                   bool whole_gradients) {
  Model m = model_layout(cfg, std::move(backend), tp, std::move(stage), sp);
  m.buf.params = kernels::DeviceArray<float>(m.buf.backend, m.layout.num_params);
  if (whole_gradients)
    m.buf.grads = kernels::DeviceArray<float>(m.buf.backend, m.layout.num_params);
  const size_t act_bytes = m.buf.backend->activation_bytes();
  if (act_bytes != sizeof(float))
    m.buf.weights =
        kernels::DeviceArray<unsigned char>(m.buf.backend, m.layout.num_params * act_bytes);
  return m;
}

void model_init(Model& m, uint64_t seed) {
  Rng rng{seed};
  const double std_w = m.spec.config.init_std();
  // The configured depth (model.loops), whatever depth the model runs now.
  const double std_proj =
      std_w / std::sqrt(2.0 * static_cast<double>(unrolled_layers(m.spec.config)));
  // Every global tensor in global order (the whole model's layout), so the generator's sequence
  // does not depend on which tensors this rank holds.
  const Model whole =
      model_layout(m.spec.config, m.buf.backend, {m.par.tp.size, m.par.tp.rank, nullptr});
  std::vector<const ParamTensor*> held(whole.layout.tensors.size(), nullptr);
  for (const ParamTensor& t : m.layout.tensors) held[t.global_index] = &t;
  std::vector<float> values;  // one global tensor at a time
  std::vector<float> local(m.layout.num_params);  // this rank's buffer, uploaded at the end
  for (const ParamTensor& t : whole.layout.tensors) {
    values.resize(tensor_global_size(t));
    switch (t.init) {
      case ParamInit::kNormal:
      case ParamInit::kNormalScaled: {
        const double std = t.init == ParamInit::kNormalScaled ? std_proj : std_w;
        for (float& x : values) x = static_cast<float>(rng.normal() * std);
        break;
      }
      case ParamInit::kOnes: std::fill(values.begin(), values.end(), 1.0f); break;
      case ParamInit::kZeros: std::fill(values.begin(), values.end(), 0.0f); break;
    }
    if (const ParamTensor* mine = held[t.global_index])
      tensor_shard_extract(*mine, m.par.tp.rank, values.data(), local.data() + mine->offset);
  }
  m.buf.params.upload(local);
  model_refresh_weights(m);
}

void model_refresh_weights(Model& m) {
  if (!m.buf.weights.empty())
    kb(m).to_activation(m.buf.weights.data(), m.buf.params.data(), m.layout.num_params);
}

namespace {

size_t floats_for(size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }

// Bump allocator over the arena, in floats; every offset is a multiple of the backend's
// alignment (64 bytes on the CPU, 256 on a GPU).
// take: n fp32 elements (statistics, tables); act: n activations of the backend's size.
struct ArenaCursor {
  explicit ArenaCursor(const kernels::KernelBackend& be)
      : act_bytes(be.activation_bytes()), align(be.alignment() / sizeof(float)) {}
  size_t act_bytes;
  size_t align;  // in floats
  size_t used = 0;
  size_t take(size_t n) {
    size_t at = used;
    used += (n + align - 1) / align * align;
    return at;
  }
  size_t act(size_t n) { return take(floats_for(n * act_bytes)); }
};
// Floats of n activations of `m`'s backend.
size_t act_floats(const Model& m, size_t n) { return floats_for(n * kb(m).activation_bytes()); }

// The output gradients a split backward's weight pass reads, of sub-layer kind `sub` (0:
// attention, 1: MLP), into `a`.
void plan_output_gradients(const Model& m, ArenaCursor& plan, int sub, size_t N, SublayerActs& a) {
  a.d_out = plan.act(N * m.spec.C);
  a.d_mid = plan.act(N * (sub == 0 ? qkv_columns(m) : mlp_columns(m)));
}

// One sub-layer's saved activations (with split backward also its output gradients).
SublayerActs plan_sublayer(const Model& m, ArenaCursor& plan, int sub, int B, int T, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.spec.C, Cl = m.par.Cl, F = m.par.Fl,
               H = m.par.Hl, rows = model_stream_rows(m, B, T);
  SublayerActs a{};
  a.input = plan.act(rows * C);  // the stream's rows and the pre-norm's: this rank's
  a.normed = plan.act(rows * C);
  a.mean = plan.take(rows);
  a.rstd = plan.take(rows);
  const size_t mid = sub == 0 ? qkv_columns(m) : mlp_columns(m);
  a.hidden = plan.act(N * mid);
  a.hidden2 = plan.act(N * (sub == 0 ? Cl : F));
  if (sub == 0) a.lse = plan.take(B * H * T);
  if (split) plan_output_gradients(m, plan, sub, N, a);
  if (const size_t r = m.spec.config.loop_lora_rank(); r > 0) {
    a.lora_in = plan.act(N * r);
    a.lora_proj = plan.act(N * r);
  }
  return a;
}

// Lays out one slot of `c`: the saved activations of its kept segments' sub-layers, the boundary
// state at each recomputed segment's start (with a split backward also its sub-layers' output
// gradients) and e once if one of them needs it, and for the last
// chunk the final norm's input and statistics and the LM head's output gradient. Offsets within
// the slot.
void plan_chunk_slot(const Model& m, ModelChunk& c, int B, int T, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.spec.C, rows = model_stream_rows(m, B, T);
  ArenaCursor plan{kb(m)};
  c.acts.assign(2 * (c.end - c.begin), SublayerActs{});
  c.keeps_injected = false;
  for (ChunkSegment& g : c.segments) {
    if (g.kind == ChunkSegment::kKept)
      for (int i = 2 * g.begin; i < 2 * g.end; ++i)
        c.acts[i - 2 * c.begin] = plan_sublayer(m, plan, i % 2, B, T, split);
    if (g.kind != ChunkSegment::kRecomputed) continue;
    for (int i = 2 * g.begin; split && i < 2 * g.end; ++i)  // what the weight pass reads
      plan_output_gradients(m, plan, i % 2, N, c.acts[i - 2 * c.begin]);
    g.checkpoint = plan.take(m.plan.checkpoint_floats);
    c.keeps_injected |= boundary_carries_injected(m, 2 * g.begin);
  }
  if (c.keeps_injected) c.injected_kept = plan.act(rows * C);
  c.routed_stream.clear();
  c.routed_out.clear();
  for (int r = 0; model_routed(m.spec.config) && r < m.spec.loops; ++r) {
    c.routed_stream.push_back(plan.act(N * C));
    c.routed_out.push_back(plan.act(N * C));
  }
  if (c.last) {
    c.final_input = plan.act(rows * C);
    c.mean_f = plan.take(rows);
    c.rstd_f = plan.take(rows);
    c.d_normed_f = plan.act(N * C);  // complete on every rank (the vocabulary-parallel head)
  }
  c.slot_floats = plan.used;
}

// What recomputation shares across slots at the current loop count: the largest unit (in
// positions) and the most units of one recomputed segment.
struct RecomputeNeeds {
  int unit_positions = 0, units = 0;
};
RecomputeNeeds recompute_needs(const Model& m) {
  RecomputeNeeds need;
  for (const ModelChunk& c : m.par.chunks)
    for (const ChunkSegment& g : c.segments) {
      if (g.kind == ChunkSegment::kKept) continue;
      for (size_t u = 0; u < g.units.size(); ++u) {
        const int end = u + 1 < g.units.size() ? g.units[u + 1] : g.end;
        need.unit_positions = std::max(need.unit_positions, end - g.units[u]);
      }
      if (g.kind == ChunkSegment::kRecomputed)
        need.units = std::max(need.units, static_cast<int>(g.units.size()));
    }
  return need;
}

// Mixture-of-Recursions' temporaries (ArenaTemporaries) for N tokens, NC = one padded (N, C).
void plan_routed_temporaries(Model& m, ArenaCursor& plan, size_t N, size_t NC) {
  const size_t half = static_cast<size_t>(m.spec.C / m.spec.H) / 2;
  m.temps.routed_state = plan.act(2 * NC);
  m.temps.routed_cos = plan.take(is_rotary(m) ? N * half : 0);
  m.temps.routed_sin = plan.take(is_rotary(m) ? N * half : 0);
  m.temps.router_logits = plan.act(N * m.spec.loops);
  m.temps.router_logits32 = plan.take(N * m.spec.loops);
  if (m.spec.config.recursion_kv() == ModelConfig::SHARED_FIRST)
    m.temps.shared_dqkv = plan.act(m.spec.config.block_layers() * N * qkv_columns(m));
}

// Lays the arena out for (B, T) into m's offsets; returns its size in floats.
size_t plan_arena(Model& m, int B, int T, int slots, int boundaries, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.spec.C, Cl = m.par.Cl, F = m.par.Fl;
  const size_t rows = model_stream_rows(m, B, T);
  // One (B, T, C) tensor of the stream (this rank's rows): 16 floats for any type.
  const size_t NC = (rows * C + 31) / 32 * 32;
  ArenaCursor plan{kb(m)};
  m.plan.checkpoint_floats =
      act_floats(m, m.spec.delay * NC);  // the stream and delay − 1 pending outputs
  // The largest slot and recomputation needs over every loop count the model may run. Each grows
  // with the loop count under every policy (more iterations keep more; SQRT's ⌈R/⌈√R⌉⌉
  // segments and ⌈√R⌉ units per segment never shrink as R grows), so the range's ends decide;
  // model_set_loops checks it.
  m.plan.slot_floats = 0;
  RecomputeNeeds need;
  const int running = m.spec.loops;
  std::vector<int> counts{m.spec.plan_loops_min};
  if (m.spec.plan_loops_max != m.spec.plan_loops_min) counts.push_back(m.spec.plan_loops_max);
  for (int loops : counts) {
    m.spec.loops = loops;
    lay_out_chunks(m);
    for (ModelChunk& c : m.par.chunks) {
      plan_chunk_slot(m, c, B, T, split);
      m.plan.slot_floats = std::max(m.plan.slot_floats, c.slot_floats);
    }
    const RecomputeNeeds n = recompute_needs(m);
    need.unit_positions = std::max(need.unit_positions, n.unit_positions);
    need.units = std::max(need.units, n.units);
  }
  if (m.spec.loops != running) {  // the chunks laid out for the count the model runs now
    m.spec.loops = running;
    lay_out_chunks(m);
    for (ModelChunk& c : m.par.chunks) plan_chunk_slot(m, c, B, T, split);
  }
  m.plan.slots = slots;
  m.plan.boundaries = boundaries;
  m.plan.slots_base = plan.take(m.plan.slot_floats * slots);
  // Stream, `delay` pending outputs, e: (2 + delay) × (B, T, C).
  m.plan.boundary_floats = act_floats(m, (2 + m.spec.delay) * NC);
  m.plan.boundaries_base = plan.take(m.plan.boundary_floats * boundaries);
  m.plan.work_acts.clear();
  for (int i = 0; i < 2 * need.unit_positions; ++i)
    m.plan.work_acts.push_back(plan_sublayer(m, plan, i % 2, B, T, false));
  m.plan.recompute_state = need.unit_positions > 0 ? plan.take(m.plan.boundary_floats) : 0;
  m.plan.inner_capacity = need.units > 1 ? need.units : 0;
  m.plan.inner_checkpoints = plan.take(m.plan.checkpoint_floats * m.plan.inner_capacity);
  m.temps.normed_f = plan.act(N * C);  // all rows: the vocabulary-parallel head reads them
  m.temps.d_normed = plan.act(m.spec.delay * rows * C);
  if (m.par.tp.sequence) {
    m.temps.partial = plan.act(m.spec.delay * N * C);
    m.temps.d_partial = plan.act(m.spec.delay * N * C);
    m.temps.gathered = plan.act(N * C);
    m.temps.gathered_grad = plan.act(N * C);
  }
  m.temps.d_hidden = plan.act(N * std::max<size_t>(qkv_columns(m), mlp_columns(m)));
  m.temps.d_hidden2 = plan.act(N * std::max(Cl, F));
  if (const size_t r = m.spec.config.loop_lora_rank(); r > 0) {
    m.temps.lora_out = plan.act(N * std::max<size_t>({static_cast<size_t>(qkv_columns(m)),
                                                      static_cast<size_t>(mlp_columns(m)), C}));
    m.temps.lora_mid = plan.act(N * r);
  }
  const int hd = m.spec.C / m.spec.H;
  if (model_routed(m.spec.config)) plan_routed_temporaries(m, plan, N, NC);
  // Rotary angles of the (local) rows 0 .. T − 1; none for learned positions.
  const size_t rope_floats = is_rotary(m) ? static_cast<size_t>(T) * hd / 2 : 0;
  m.temps.rope_cos = plan.take(rope_floats);
  m.temps.rope_sin = plan.take(rope_floats);
  const kernels::KernelBackend& be = kb(m);
  const bool ulysses = m.par.sp.size > 1 && m.par.sp.method == SequenceMethod::kUlysses;
  if (ulysses) {  // two all-to-alls around whole-sequence attention on a head group
    m.temps.ulysses_work = plan.act(ulysses_workspace_activations(B, T, m.par.Cl, m.par.Ckvl));
  } else if (m.par.sp.size > 1) {  // ring attention's blocks instead of whole-sequence attention
    m.temps.ring_work = plan.act(ring_workspace_activations(B, T, m.par.Cl, m.par.Ckvl));
    m.temps.ring_lse = plan.take(ring_workspace_lse_floats(B, T, m.par.Hl));
  }
  if (m.par.sp.size > 1) {
    if (!is_rotary(m)) {
      m.temps.wpe_local = plan.act(static_cast<size_t>(T) * C);    // wpe's rows (the weights' type)
      m.temps.dwpe_local = plan.take(static_cast<size_t>(T) * C);  // their gradient, fp32
    }
  }
  m.plan.attention_scratch_bytes =
      ulysses             ? ulysses_scratch_bytes(be, B, T, m.par.Cl, m.par.Hl, m.par.sp.size)
      : m.par.sp.size > 1 ? be.attention_block_scratch_bytes(B, m.par.Hl, T, T)
                          : be.attention_scratch_bytes(B, T, m.par.Cl, m.par.Hl);
  if (m.spec.config.recursion_kv() == ModelConfig::SHARED_FIRST)  // blocks of one sequence
    m.plan.attention_scratch_bytes =
        std::max(m.plan.attention_scratch_bytes, be.attention_block_scratch_bytes(1, m.par.Hl, T, T));
  m.temps.attention_scratch = plan.take(floats_for(m.plan.attention_scratch_bytes));
  const int chunk = std::min<int>(m.spec.config.lm_head_chunk(), static_cast<int>(N));
  m.temps.lm_head_scratch = plan.take(
      floats_for(m.par.tp.size > 1 ? vocab_parallel_scratch_bytes(be, chunk, m.par.vocab.rows)
                                   : be.lm_head_scratch_bytes(chunk, m.spec.V)));
  // One scratch serves every norm backward (one kind per model) and the embedding backward.
  const size_t norm_bytes = is_layernorm(m) ? be.layernorm_backward_scratch_bytes(rows, m.spec.C)
                                            : be.rmsnorm_backward_scratch_bytes(rows, m.spec.C);
  m.temps.norm_scratch = plan.take(floats_for(norm_bytes));
  m.temps.embedding_scratch =
      plan.take(floats_for(be.embedding_backward_scratch_bytes(B, T, m.spec.C)));
  m.plan.shared_floats = plan.used - m.plan.slots_base - m.plan.slot_floats * slots -
                         m.plan.boundary_floats * boundaries;
  return plan.used;
}

}  // namespace

ArenaSizes model_arena_sizes(const Model& model, int B, int T, int slots, int boundaries,
                             bool split_backward, Recompute recompute) {
  Model copy = model_layout(model.spec.config, model.buf.backend, model.par.tp, model.par.stage,
                            model.par.sp);
  copy.spec.loops = model.spec.loops;
  copy.spec.plan_loops_min = model.spec.plan_loops_min;
  copy.spec.plan_loops_max = model.spec.plan_loops_max;
  copy.plan.recompute = recompute;
  const size_t total = plan_arena(copy, B, T, slots, boundaries, split_backward);
  return {total, copy.plan.slot_floats, copy.plan.boundary_floats, copy.plan.shared_floats};
}

void model_plan(Model& m, int B, int T, int slots, int boundaries, bool split_backward,
                Recompute recompute) {
  LOOM_CHECK(m.plan.B == 0);  // planned once
  LOOM_CHECK(T * m.par.sp.size <= m.spec.max_T && slots >= 1 && boundaries >= 1);
  // A split backward's weight pass recomputes what recomputation does not keep; truncated
  // backprop's segments have no weight pass.
  LOOM_CHECK(!split_backward || m.spec.config.backprop_loops() == 0);
  m.plan.B = B;
  m.plan.T = T;
  m.plan.split_backward = split_backward;
  m.plan.recompute = recompute;
  m.buf.arena = kernels::DeviceArray<float>(m.buf.backend,
                                            plan_arena(m, B, T, slots, boundaries, split_backward));
  const int hd = m.spec.C / m.spec.H;
  if (m.par.sp.size > 1)
    m.temps.positions =
        sequence_positions(m.par.sp.layout, T * m.par.sp.size, m.par.sp.size, m.par.sp.rank);
  // Row t: the angles of position t, or with sp > 1 of the global position of local row t.
  const SequencePieces pieces =
      m.par.sp.size > 1
          ? sequence_pieces(m.par.sp.layout, T * m.par.sp.size, m.par.sp.size, m.par.sp.rank)
          : sequence_pieces(SequenceLayout::kContiguous, T, 1, 0);  // rows 0 .. T − 1
  if (is_rotary(m))
    for (const SequencePiece& p : pieces) {
      const size_t row = static_cast<size_t>(p.row) * hd / 2;
      kb(m).rope_table(stat(m, m.temps.rope_cos) + row, stat(m, m.temps.rope_sin) + row, p.rows, hd,
                       m.spec.config.rope_theta(), p.position);
    }
  m.buf.slot_tokens = kernels::DeviceArray<int>(m.buf.backend, static_cast<size_t>(slots) * B * T);
  m.buf.targets = kernels::DeviceArray<int>(m.buf.backend, static_cast<size_t>(B) * T);
  if (model_routed(m.spec.config)) {
    const size_t routes = static_cast<size_t>(slots) * m.spec.loops * B * T;
    m.routing.routes.assign(slots, std::vector<LoopRoute>(m.spec.loops));
    m.routing.grad_scale.assign(slots, 0.0f);
    m.routing.rows = kernels::DeviceArray<int>(m.buf.backend, routes);
    m.routing.gates = kernels::DeviceArray<float>(m.buf.backend, routes);
    m.routing.scratch =
        kernels::DeviceArray<float>(m.buf.backend, 2 * static_cast<size_t>(B) * T * m.spec.loops);
    m.routing.active.assign(m.spec.loops, 0.0);
  }
}

void model_set_loop_range(Model& m, int min_loops, int max_loops) {
  LOOM_CHECK(m.plan.B == 0 && min_loops >= 1 && min_loops <= max_loops);
  LOOM_CHECK(min_loops == max_loops || m.par.stage.plan.pieces() == 1);
  m.spec.plan_loops_min = min_loops;
  m.spec.plan_loops_max = max_loops;
  model_set_loops(m, max_loops);
}

void model_set_loops(Model& m, int loops) {
  if (loops == m.spec.loops) return;
  if (!m.layout.lora.empty() && loops > static_cast<int>(m.layout.lora.size()))
    throw Error("the model has per-iteration LoRA (model.loop_lora_rank) for its model.loops = " +
                std::to_string(m.layout.lora.size()) + " iterations; it cannot run " +
                std::to_string(loops));
  if (model_routed(m.spec.config) && loops != m.spec.config.loops())
    throw Error(
        "the model routes its loop (model.recursion_router) with one router row per "
        "iteration of its model.loops = " +
        std::to_string(m.spec.config.loops()) + "; it cannot run " + std::to_string(loops));
  // Pipeline stages cut a fixed unrolled list; a planned arena serves its planned range.
  LOOM_CHECK(m.par.stage.plan.pieces() == 1);
  LOOM_CHECK(m.plan.B == 0 || (loops >= m.spec.plan_loops_min && loops <= m.spec.plan_loops_max));
  m.spec.loops = loops;
  lay_out_chunks(m);
  if (m.plan.B == 0) return;
  for (ModelChunk& c : m.par.chunks) {
    plan_chunk_slot(m, c, m.plan.B, m.plan.T, m.plan.split_backward);
    LOOM_CHECK(c.slot_floats <= m.plan.slot_floats);
  }
  const RecomputeNeeds need = recompute_needs(m);
  LOOM_CHECK(2 * need.unit_positions <= static_cast<int>(m.plan.work_acts.size()));
  LOOM_CHECK(need.units <= 1 || need.units <= m.plan.inner_capacity);
}

size_t model_stream_rows(const Model& m, int B, int T) {
  const size_t N = static_cast<size_t>(B) * T;
  return m.par.tp.sequence ? N / m.par.tp.size : N;
}

size_t model_boundary_count(const Model& m, int chunk, bool at_end, int B, int T) {
  const ModelChunk& c = m.par.chunks[chunk];
  const bool injected = at_end ? c.injected_out : c.injected_in;
  return (m.spec.delay + (injected ? 1 : 0)) * model_stream_rows(m, B, T) * m.spec.C;
}

namespace {

float* boundary_buffer(Model& m, int index) {
  LOOM_CHECK(index >= 0 && index < m.plan.boundaries);
  return m.buf.arena.data() + m.plan.boundaries_base + index * m.plan.boundary_floats;
}

}  // namespace

BoundaryState model_boundary_state(Model& m, int index, int B, int T) {
  return {boundary_buffer(m, index), model_stream_rows(m, B, T) * m.spec.C, m.spec.delay,
          kb(m).activation_bytes()};
}

float* model_boundary(Model& m, int index, int B, int T) {
  return static_cast<float*>(model_boundary_state(m, index, B, T).stream());
}

}  // namespace loom
