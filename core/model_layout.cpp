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
  std::function<std::vector<int>(ParamRole, int)> holders;  // pipeline ranks holding it
  int global_index = 0;

  // Adds a tensor of global shape `shape`; with shard_dim ≥ 0 this rank holds its slice of that
  // dimension (seen as `groups` groups, each cut into tp slices; see ParamTensor). Returns its
  // offset, or 0 when this pipeline rank does not hold it.
  size_t add(std::string name, std::vector<int64_t> shape, bool decay, ParamRole role, int layer,
             ParamInit init, int shard_dim = -1, int groups = 1) {
    const int index = global_index++;
    std::vector<int> held_by = holders(role, layer);
    if (std::find(held_by.begin(), held_by.end(), m.stage.rank) == held_by.end()) return 0;
    std::vector<int64_t> local = shape;
    if (shard_dim >= 0) {
      const int64_t group = shape[shard_dim] / groups;
      // A vocabulary (the only dimension tp need not divide) is padded to a multiple of tp.
      local[shard_dim] = groups * ((group + m.tp.size - 1) / m.tp.size);
    }
    size_t size = 1;
    for (int64_t d : local) size *= static_cast<size_t>(d);
    m.tensors.push_back({std::move(name), std::move(local), m.num_params, size, decay,
                         std::move(shape), shard_dim, groups, role, layer, init, index,
                         std::move(held_by)});
    m.num_params += size;
    return m.tensors.back().offset;
  }

  void add_layer(const std::string& prefix, int u) {
    const int64_t C = m.C, F = m.F;
    const bool ln = is_layernorm(m);
    const ParamRole L = ParamRole::kLayer;
    LayerOffsets o{};
    o.norm1_w = add(prefix + "norm1.weight", {C}, false, L, u, ParamInit::kOnes);
    if (ln) o.norm1_b = add(prefix + "norm1.bias", {C}, false, L, u, ParamInit::kZeros);
    // Column-parallel: this rank's heads' rows of q, k and v.
    o.qkv_w = add(prefix + "attn.qkv.weight", {3 * C, C}, true, L, u, ParamInit::kNormal, 0, 3);
    o.qkv_b = add(prefix + "attn.qkv.bias", {3 * C}, false, L, u, ParamInit::kZeros, 0, 3);
    // Row-parallel: the input columns of this rank's heads; the bias is added once, by tp rank 0.
    o.attn_proj_w =
        add(prefix + "attn.proj.weight", {C, C}, true, L, u, ParamInit::kNormalScaled, 1);
    o.attn_proj_b = add(prefix + "attn.proj.bias", {C}, false, L, u, ParamInit::kZeros);
    o.norm2_w = add(prefix + "norm2.weight", {C}, false, L, u, ParamInit::kOnes);
    if (ln) o.norm2_b = add(prefix + "norm2.bias", {C}, false, L, u, ParamInit::kZeros);
    o.fc_w = add(prefix + "mlp.fc.weight", {F, C}, true, L, u, ParamInit::kNormal, 0);
    o.fc_b = add(prefix + "mlp.fc.bias", {F}, false, L, u, ParamInit::kZeros, 0);
    o.mlp_proj_w =
        add(prefix + "mlp.proj.weight", {C, F}, true, L, u, ParamInit::kNormalScaled, 1);
    o.mlp_proj_b = add(prefix + "mlp.proj.bias", {C}, false, L, u, ParamInit::kZeros);
    m.layers.push_back(o);
  }
};

}  // namespace

// The unrolled list at m.loops iterations, this rank's chunks (with their segments under the
// model's recomputation policy) and where it first runs each unique layer.
void model_detail::lay_out_chunks(Model& m) {
  const ModelConfig& cfg = m.config;
  const int P = cfg.prelude_layers(), K = cfg.block_layers(), Q = cfg.coda_layers();
  m.unrolled.clear();
  m.chunks.clear();
  for (int i = 0; i < P; ++i) m.unrolled.push_back(i);
  m.loop_begin = P;
  for (int r = 0; r < m.loops; ++r)
    for (int j = 0; j < K; ++j) m.unrolled.push_back(P + j);
  for (int i = 0; i < Q; ++i) m.unrolled.push_back(P + K + i);
  const int n = static_cast<int>(m.unrolled.size());
  // A single stage runs the whole list, however deep (model_set_loops).
  if (m.stage.plan.pp == 1 && m.stage.plan.virtual_stages == 1) m.stage.plan = {1, 1, {0, n}};
  LOOM_CHECK(m.stage.plan.positions() == n && m.stage.rank < m.stage.plan.pp);
  m.first_use.assign(m.unique_layers, -1);
  for (int piece : stage_plan_pieces(m.stage.plan, m.stage.rank)) {
    ModelChunk c;
    c.begin = m.stage.plan.bounds[piece];
    c.end = m.stage.plan.bounds[piece + 1];
    c.piece = piece;
    c.first = c.begin == 0;
    c.last = c.end == n;
    c.injected_in = boundary_carries_injected(m, 2 * c.begin);
    c.injected_out = !c.last && boundary_carries_injected(m, 2 * c.end);
    for (int p = c.begin; p < c.end; ++p)
      if (m.first_use[m.unrolled[p]] < 0) m.first_use[m.unrolled[p]] = p;
    plan_segments(m, c);
    m.chunks.push_back(std::move(c));
  }
}

namespace {

// Pipeline ranks that hold a tensor of this role (and unique layer).
std::vector<int> holders_of(const Model& m, ParamRole role, int layer) {
  const StagePlan& plan = m.stage.plan;
  const int last_rank = (plan.pieces() - 1) % plan.pp;
  std::vector<int> out;
  switch (role) {
    case ParamRole::kTokenEmbedding:
      out.push_back(0);
      if (m.config.tie_embeddings() && last_rank != 0) out.push_back(last_rank);
      break;
    case ParamRole::kPositionEmbedding: out.push_back(0); break;
    case ParamRole::kFinalNorm:
    case ParamRole::kLmHead: out.push_back(last_rank); break;
    case ParamRole::kLayer:
      for (int r = 0; r < plan.pp; ++r)
        if (stage_plan_runs_layer(m.config, plan, r, layer)) out.push_back(r);
      break;
  }
  return out;
}

// Ranges of each unique layer's tensors, of the embeddings and of the head.
void lay_out_ranges(Model& m) {
  m.layer_ranges.assign(m.unique_layers, ShardRange{});
  m.embedding_range = m.head_range = ShardRange{};
  for (const ParamTensor& t : m.tensors) {
    ShardRange& r = t.role == ParamRole::kLayer ? m.layer_ranges[t.layer]
                    : (t.role == ParamRole::kFinalNorm || t.role == ParamRole::kLmHead)
                        ? m.head_range
                        : m.embedding_range;
    if (r.size() == 0) r = {t.offset, t.offset};
    LOOM_CHECK(r.end == t.offset);  // contiguous
    r.end = t.offset + t.size;
  }
}

}  // namespace

Model model_layout(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp, PipelineStage stage, SequenceParallel sp) {
  Model m;
  m.config = cfg;
  m.backend = backend ? std::move(backend) : make_cpu_backend();
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
  m.tp.type = activation_data_type(*m.backend);
  LOOM_CHECK(sp.size >= 1 && sp.rank >= 0 && sp.rank < sp.size);
  LOOM_CHECK(!sp.comm || (sp.comm->size() == sp.size && sp.comm->rank() == sp.rank));
  if (sp.size == 1) sp.comm = nullptr;
  m.sp = sp;
  m.ring = RingAttention(sp.comm, sp.layout);
  m.stage = std::move(stage);
  m.Hl = m.H / tp.size;
  m.Cl = m.Hl * (m.C / m.H);
  m.Fl = m.F / tp.size;
  m.vocab = vocab_shard(m.V, tp.size, tp.rank);
  m.tp_sums.forward.resize(m.delay);
  m.tp_sums.backward.resize(m.delay);
  m.unique_layers = cfg.prelude_layers() + cfg.block_layers() + cfg.coda_layers();
  m.loops = m.plan_loops_min = m.plan_loops_max = cfg.loops();
  lay_out_chunks(m);

  LayoutBuilder b{m, [&m](ParamRole role, int layer) { return holders_of(m, role, layer); }};
  // Vocab-parallel: this rank's rows of the padded vocabulary.
  m.wte = b.add("wte", {m.V, m.C}, true, ParamRole::kTokenEmbedding, -1, ParamInit::kNormal, 0);
  m.has_wte = !m.tensors.empty();
  if (!is_rotary(m))
    m.wpe = b.add("wpe", {m.max_T, m.C}, true, ParamRole::kPositionEmbedding, -1,
                  ParamInit::kNormal);
  for (int i = 0; i < cfg.prelude_layers(); ++i)
    b.add_layer("prelude." + std::to_string(i) + ".", i);
  for (int i = 0; i < cfg.block_layers(); ++i)
    b.add_layer("block." + std::to_string(i) + ".", cfg.prelude_layers() + i);
  for (int i = 0; i < cfg.coda_layers(); ++i)
    b.add_layer("coda." + std::to_string(i) + ".", cfg.prelude_layers() + cfg.block_layers() + i);
  m.norm_f_w = b.add("norm_f.weight", {m.C}, false, ParamRole::kFinalNorm, -1, ParamInit::kOnes);
  if (is_layernorm(m))
    m.norm_f_b = b.add("norm_f.bias", {m.C}, false, ParamRole::kFinalNorm, -1, ParamInit::kZeros);
  if (!cfg.tie_embeddings())
    m.lm_head = b.add("lm_head.weight", {m.V, m.C}, true, ParamRole::kLmHead, -1,
                      ParamInit::kNormal, 0);
  m.global_tensors = static_cast<size_t>(b.global_index);
  lay_out_ranges(m);
  return m;
}

Model model_create(const ModelConfig& cfg, std::shared_ptr<const kernels::KernelBackend> backend,
                   TensorParallel tp, PipelineStage stage, SequenceParallel sp) {
  Model m = model_layout(cfg, std::move(backend), tp, std::move(stage), sp);
  m.params = kernels::DeviceArray<float>(m.backend, m.num_params);
  m.grads = kernels::DeviceArray<float>(m.backend, m.num_params);
  const size_t act_bytes = m.backend->activation_bytes();
  if (act_bytes != sizeof(float))
    m.weights = kernels::DeviceArray<unsigned char>(m.backend, m.num_params * act_bytes);
  return m;
}

void model_init(Model& m, uint64_t seed) {
  Rng rng{seed};
  const double std_w = m.config.init_std();
  // The configured depth (model.loops), whatever depth the model runs now.
  const double std_proj = std_w / std::sqrt(2.0 * static_cast<double>(unrolled_layers(m.config)));
  // Every global tensor in global order (the whole model's layout), so the generator's sequence
  // does not depend on which tensors this rank holds.
  const Model whole = model_layout(m.config, m.backend, {m.tp.size, m.tp.rank, nullptr});
  std::vector<const ParamTensor*> held(whole.tensors.size(), nullptr);
  for (const ParamTensor& t : m.tensors) held[t.global_index] = &t;
  std::vector<float> values;  // one global tensor at a time
  std::vector<float> local(m.num_params);  // this rank's buffer, uploaded at the end
  for (const ParamTensor& t : whole.tensors) {
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
      tensor_shard_extract(*mine, m.tp.rank, values.data(), local.data() + mine->offset);
  }
  m.params.upload(local);
  model_refresh_weights(m);
}

void model_refresh_weights(Model& m) {
  if (!m.weights.empty()) kb(m).to_activation(m.weights.data(), m.params.data(), m.num_params);
}

namespace {

size_t floats_for(size_t bytes) { return (bytes + sizeof(float) - 1) / sizeof(float); }

// Bump allocator over the arena, in floats; every offset is a multiple of 16 floats (64 bytes).
// take: n fp32 elements (statistics, tables); act: n activations of the backend's size.
struct ArenaPlan {
  size_t act_bytes = sizeof(float);
  size_t used = 0;
  size_t take(size_t n) {
    size_t at = used;
    used += (n + 15) / 16 * 16;
    return at;
  }
  size_t act(size_t n) { return take(floats_for(n * act_bytes)); }
};
// Floats of n activations of `m`'s backend.
size_t act_floats(const Model& m, size_t n) { return floats_for(n * kb(m).activation_bytes()); }

// One sub-layer's saved activations (with split backward also its output gradients).
SublayerActs plan_sublayer(const Model& m, ArenaPlan& plan, int sub, int B, int T, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.C, Cl = m.Cl, F = m.Fl, H = m.Hl;
  SublayerActs a{};
  a.input = plan.act(N * C);
  a.normed = plan.act(N * C);
  a.mean = plan.take(N);
  a.rstd = plan.take(N);
  a.hidden = plan.act(N * (sub == 0 ? 3 * Cl : F));
  a.hidden2 = plan.act(N * (sub == 0 ? Cl : F));
  if (sub == 0) a.lse = plan.take(B * H * T);
  if (split) {
    a.d_out = plan.act(N * C);
    a.d_mid = plan.act(N * (sub == 0 ? 3 * Cl : F));
  }
  return a;
}

// Lays out one slot of `c`: the saved activations of its kept segments' sub-layers, the boundary
// state at each recomputed segment's start and e once if one of them needs it, and for the last
// chunk the final norm's input and statistics and the LM head's output gradient. Offsets within
// the slot.
void plan_chunk_slot(const Model& m, ModelChunk& c, int B, int T, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.C;
  ArenaPlan plan{kb(m).activation_bytes()};
  c.acts.assign(2 * (c.end - c.begin), SublayerActs{});
  c.keeps_injected = false;
  for (ChunkSegment& g : c.segments) {
    if (g.kind == ChunkSegment::kKept)
      for (int i = 2 * g.begin; i < 2 * g.end; ++i)
        c.acts[i - 2 * c.begin] = plan_sublayer(m, plan, i % 2, B, T, split);
    if (g.kind != ChunkSegment::kRecomputed) continue;
    g.checkpoint = plan.take(m.checkpoint_floats);
    c.keeps_injected |= boundary_carries_injected(m, 2 * g.begin);
  }
  if (c.keeps_injected) c.injected_kept = plan.act(N * C);
  if (c.last) {
    c.final_input = plan.act(N * C);
    c.mean_f = plan.take(N);
    c.rstd_f = plan.take(N);
    c.d_normed_f = plan.act(N * C);
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
  for (const ModelChunk& c : m.chunks)
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

// Lays the arena out for (B, T) into m's offsets; returns its size in floats.
size_t plan_arena(Model& m, int B, int T, int slots, int boundaries, bool split) {
  const size_t N = static_cast<size_t>(B) * T, C = m.C, Cl = m.Cl, F = m.Fl;
  const size_t NC = (N * C + 31) / 32 * 32;  // one (B, T, C) tensor: 16 floats for any type
  ArenaPlan plan{kb(m).activation_bytes()};
  m.checkpoint_floats = act_floats(m, m.delay * NC);  // the stream and delay − 1 pending outputs
  // The largest slot and recomputation needs over every loop count the model may run. Each grows
  // with the loop count under every policy (more iterations keep more; SQRT's ⌈R/⌈√R⌉⌉
  // segments and ⌈√R⌉ units per segment never shrink as R grows), so the range's ends decide;
  // model_set_loops checks it.
  m.slot_floats = 0;
  RecomputeNeeds need;
  const int running = m.loops;
  std::vector<int> counts{m.plan_loops_min};
  if (m.plan_loops_max != m.plan_loops_min) counts.push_back(m.plan_loops_max);
  for (int loops : counts) {
    m.loops = loops;
    lay_out_chunks(m);
    for (ModelChunk& c : m.chunks) {
      plan_chunk_slot(m, c, B, T, split);
      m.slot_floats = std::max(m.slot_floats, c.slot_floats);
    }
    const RecomputeNeeds n = recompute_needs(m);
    need.unit_positions = std::max(need.unit_positions, n.unit_positions);
    need.units = std::max(need.units, n.units);
  }
  if (m.loops != running) {  // the chunks laid out for the count the model runs now
    m.loops = running;
    lay_out_chunks(m);
    for (ModelChunk& c : m.chunks) plan_chunk_slot(m, c, B, T, split);
  }
  m.slots = slots;
  m.boundaries = boundaries;
  m.slots_base = plan.take(m.slot_floats * slots);
  // Stream, `delay` pending outputs, e: (2 + delay) × (B, T, C).
  m.boundary_floats = act_floats(m, (2 + m.delay) * NC);
  m.boundaries_base = plan.take(m.boundary_floats * boundaries);
  m.work_acts.clear();
  for (int i = 0; i < 2 * need.unit_positions; ++i)
    m.work_acts.push_back(plan_sublayer(m, plan, i % 2, B, T, false));
  m.recompute_state = need.unit_positions > 0 ? plan.take(m.boundary_floats) : 0;
  m.inner_capacity = need.units > 1 ? need.units : 0;
  m.inner_checkpoints = plan.take(m.checkpoint_floats * m.inner_capacity);
  m.normed_f = plan.act(N * C);
  m.d_normed = plan.act(m.delay * N * C);
  m.d_hidden = plan.act(N * std::max(3 * Cl, F));
  m.d_hidden2 = plan.act(N * std::max(Cl, F));
  const int hd = m.C / m.H;
  // Rotary angles of the (local) rows 0 .. T − 1; none for learned positions.
  const size_t rope_floats = is_rotary(m) ? static_cast<size_t>(T) * hd / 2 : 0;
  m.rope_cos = plan.take(rope_floats);
  m.rope_sin = plan.take(rope_floats);
  const kernels::KernelBackend& be = kb(m);
  if (m.sp.size > 1) {  // ring attention's blocks instead of whole-sequence attention
    m.ring_work = plan.act(ring_workspace_activations(B, T, m.Cl));
    m.ring_lse = plan.take(ring_workspace_lse_floats(B, T, m.Hl));
    if (!is_rotary(m)) {
      m.wpe_local = plan.act(static_cast<size_t>(T) * C);      // wpe's rows (the weights' type)
      m.dwpe_local = plan.take(static_cast<size_t>(T) * C);    // their gradient, fp32
    }
  }
  m.plan_attention_scratch_bytes = m.sp.size > 1 ? be.attention_block_scratch_bytes(B, m.Hl, T, T)
                                                 : be.attention_scratch_bytes(B, T, m.Cl, m.Hl);
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
  m.shared_floats = plan.used - m.slots_base - m.slot_floats * slots -
                    m.boundary_floats * boundaries;
  return plan.used;
}

}  // namespace

ArenaSizes model_arena_sizes(const Model& model, int B, int T, int slots, int boundaries,
                             bool split_backward, Recompute recompute) {
  Model copy = model_layout(model.config, model.backend, model.tp, model.stage, model.sp);
  copy.loops = model.loops;
  copy.plan_loops_min = model.plan_loops_min;
  copy.plan_loops_max = model.plan_loops_max;
  copy.recompute = recompute;
  const size_t total = plan_arena(copy, B, T, slots, boundaries, split_backward);
  return {total, copy.slot_floats, copy.boundary_floats, copy.shared_floats};
}

void model_plan(Model& m, int B, int T, int slots, int boundaries, bool split_backward,
                Recompute recompute) {
  LOOM_CHECK(m.plan_B == 0);  // planned once
  LOOM_CHECK(T * m.sp.size <= m.max_T && slots >= 1 && boundaries >= 1);
  // A split backward's weight pass reads the activations recomputation does not keep.
  LOOM_CHECK(!split_backward || (recompute == Recompute::kNone && m.config.backprop_loops() == 0));
  m.plan_B = B;
  m.plan_T = T;
  m.split_backward = split_backward;
  m.recompute = recompute;
  m.arena = kernels::DeviceArray<float>(m.backend, plan_arena(m, B, T, slots, boundaries, split_backward));
  const int hd = m.C / m.H;
  if (m.sp.size > 1) m.positions = sequence_positions(m.sp.layout, T * m.sp.size, m.sp.size, m.sp.rank);
  // Row t: the angles of position t, or with sp > 1 of the global position of local row t.
  const SequencePieces pieces =
      m.sp.size > 1 ? sequence_pieces(m.sp.layout, T * m.sp.size, m.sp.size, m.sp.rank)
                    : sequence_pieces(SequenceLayout::kContiguous, T, 1, 0);  // rows 0 .. T − 1
  if (is_rotary(m))
    for (const SequencePiece& p : pieces) {
      const size_t row = static_cast<size_t>(p.row) * hd / 2;
      kb(m).rope_table(stat(m, m.rope_cos) + row, stat(m, m.rope_sin) + row, p.rows, hd,
                       m.config.rope_theta(), p.position);
    }
  m.slot_tokens = kernels::DeviceArray<int>(m.backend, static_cast<size_t>(slots) * B * T);
  m.targets = kernels::DeviceArray<int>(m.backend, static_cast<size_t>(B) * T);
}

void model_set_loop_range(Model& m, int min_loops, int max_loops) {
  LOOM_CHECK(m.plan_B == 0 && min_loops >= 1 && min_loops <= max_loops);
  LOOM_CHECK(min_loops == max_loops || m.stage.plan.pieces() == 1);
  m.plan_loops_min = min_loops;
  m.plan_loops_max = max_loops;
  model_set_loops(m, max_loops);
}

void model_set_loops(Model& m, int loops) {
  if (loops == m.loops) return;
  // Pipeline stages cut a fixed unrolled list; a planned arena serves its planned range.
  LOOM_CHECK(m.stage.plan.pieces() == 1);
  LOOM_CHECK(m.plan_B == 0 || (loops >= m.plan_loops_min && loops <= m.plan_loops_max));
  m.loops = loops;
  lay_out_chunks(m);
  if (m.plan_B == 0) return;
  for (ModelChunk& c : m.chunks) {
    plan_chunk_slot(m, c, m.plan_B, m.plan_T, m.split_backward);
    LOOM_CHECK(c.slot_floats <= m.slot_floats);
  }
  const RecomputeNeeds need = recompute_needs(m);
  LOOM_CHECK(2 * need.unit_positions <= static_cast<int>(m.work_acts.size()));
  LOOM_CHECK(need.units <= 1 || need.units <= m.inner_capacity);
}

size_t model_boundary_count(const Model& m, int chunk, bool at_end, int B, int T) {
  const ModelChunk& c = m.chunks[chunk];
  const bool injected = at_end ? c.injected_out : c.injected_in;
  return (m.delay + (injected ? 1 : 0)) * static_cast<size_t>(B) * T * m.C;
}

namespace {

float* boundary_buffer(Model& m, int index) {
  LOOM_CHECK(index >= 0 && index < m.boundaries);
  return m.arena.data() + m.boundaries_base + index * m.boundary_floats;
}

}  // namespace

BoundaryState model_boundary_state(Model& m, int index, int B, int T) {
  return {boundary_buffer(m, index), static_cast<size_t>(B) * T * m.C, m.delay,
          kb(m).activation_bytes()};
}

float* model_boundary(Model& m, int index, int B, int T) {
  return static_cast<float*>(model_boundary_state(m, index, B, T).stream());
}

}  // namespace loom
