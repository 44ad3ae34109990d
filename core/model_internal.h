// Pieces the model's files share (core/model_layout.cpp, core/model_sublayers.cpp,
// core/model_walk.cpp, core/model.cpp, core/model_routed.cpp): arena access, the
// tensor-parallel sums, the sub-layers' forward and backward, the walk and the routed loop. Not a
// public interface.
#pragma once
#include <functional>
#include <vector>

#include "core/model.h"

namespace loom::model_detail {

inline bool is_layernorm(const Model& m) {
  return m.spec.config.norm() == config::ModelConfig::LAYERNORM;
}
inline bool is_rotary(const Model& m) {
  return m.spec.config.position() == config::ModelConfig::ROTARY;
}
inline bool is_swiglu(const Model& m) { return m.spec.config.mlp() == config::ModelConfig::SWIGLU; }
// This rank's columns of the fused qkv (q, then k and v of its key/value heads) and of the MLP's
// fc output (SwiGLU: gate then up).
inline int qkv_columns(const Model& m) { return m.par.Cl + 2 * m.par.Ckvl; }
inline int mlp_columns(const Model& m) { return (is_swiglu(m) ? 2 : 1) * m.par.Fl; }
inline const kernels::KernelBackend& kb(const Model& m) { return *m.buf.backend; }

// Arena regions: activations (the backend's type) and fp32 statistics or tables.
inline void* act(Model& m, size_t offset) { return m.buf.arena.data() + offset; }
inline float* stat(Model& m, size_t offset) { return m.buf.arena.data() + offset; }
// The activation `elements` past `base`.
inline void* act_offset(const Model& m, void* base, size_t elements) {
  return static_cast<char*>(base) + elements * kb(m).activation_bytes();
}
inline const void* act_offset(const Model& m, const void* base, size_t elements) {
  return static_cast<const char*>(base) + elements * kb(m).activation_bytes();
}
// The weights the kernels read: the fp32 master copy, or on a bf16 backend its bf16 copy.
inline const void* weight(Model& m, size_t offset) {
  if (m.buf.weights.empty()) return m.buf.params.data() + offset;
  return m.buf.weights.data() + offset * kb(m).activation_bytes();
}
inline float* grad(Model& m, size_t offset) {
  if (m.buf.grad_windows) return grad_windows_at(*m.buf.grad_windows, offset);
  return m.buf.grads.data() + offset;
}
// A bias the kernels read, or null when the model has none (kNoTensor); and its gradient.
inline const void* bias(Model& m, size_t offset) {
  return offset == kNoTensor ? nullptr : weight(m, offset);
}
inline float* bias_grad(Model& m, size_t offset) {
  return offset == kNoTensor ? nullptr : grad(m, offset);
}

// The offsets the sub-layers of unrolled position p use: its unique layer's, and inside the loop
// (with model.loop_lora_rank) its iteration's LoRA factors.
LayerOffsets layer_at(const Model& m, int p);

// sp > 1: the ring's buffers in the arena for (B, T) local tokens.
RingWorkspace ring_workspace(Model& m, int B, int T);
UlyssesWorkspace ulysses_workspace(Model& m, int B, int T);

// A row-parallel layer's bias: added by tp rank 0 only, so the all-reduced sum holds it once.
const void* row_parallel_bias(Model& m, size_t offset);

// Arena offset of slot `slot`'s start.
inline size_t slot_base(const Model& m, int slot) {
  return m.plan.slots_base + slot * m.plan.slot_floats;
}
// A sub-layer's saved activations in slot `slot` (absolute arena offsets).
SublayerActs acts_in_slot(const Model& m, const SublayerActs& a, int slot);

// tp_wait (parallel/tensor_parallel.h) on the model's sums, recording in the trace the waits
// that blocked.
void tp_wait(Model& m, WorkPtr& work);

// parallel.tp_sequence_parallel: every rank's rows of an (N, ·) activation, gathered into the
// arena at `full` from this rank's at `local` (n elements in all) — or, without, `local` itself.
struct GatheredRows {
  const void* rows = nullptr;
  WorkPtr work;  // in flight; null once arrived
};
GatheredRows gather_rows_start(Model& m, const void* local, size_t full, size_t n);
// The rows, once arrived (the wait is exposed tensor-parallel communication).
const void* gathered_rows(Model& m, GatheredRows& g);

// The pre-norm over `rows` rows of the stream (N, or this rank's under sequence parallelism).
void norm_forward(Model& m, size_t w, size_t b, const SublayerActs& a, int rows);
// d_input += backward of the pre-norm, from the (complete) gradient of its output (`rows` rows).
void norm_backward(Model& m, size_t w, size_t b, const SublayerActs& a, int rows,
                   const void* d_normed, void* d_input);
// h (B, T, C) = Attn(norm1(input)) / MLP(norm2(input)): this rank's part of it (all of it when
// tp = 1).
// A routed loop iteration's tokens (core/model_routed.cpp), which a walk runs as B = 1 and T =
// their count: attention within each sequence's rows, rotary at the tokens' own positions
// (m.temps.routed_cos/sin).
struct RoutedTokens {
  const LoopRoute* route = nullptr;  // lengths per sequence, rows b·T + t
  int T = 0;                         // the sequences' length
  // model.recursion_kv SHARED_FIRST, by attention sub-layer (null where none): after the first
  // iteration, the first iteration's qkv of the same block layer (B·T rows), whose keys and
  // values attention reads instead of the tokens' own, and where backward adds their gradient
  // (the same layout); in the first iteration, the gradient the later ones left there.
  std::function<const void*(int sublayer)> shared_qkv;
  std::function<void*(int sublayer)> shared_dqkv;
  std::function<const void*(int sublayer)> own_dqkv;
};

// With `routed` (sub-layer `sublayer` of a routed iteration) attention runs within each
// sequence, rotary at the tokens' own positions.
void attention_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                int T, void* h, const RoutedTokens* routed = nullptr,
                                int sublayer = -1);
void mlp_sublayer_forward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                          void* h);
// d_normed (B, T, C) = this rank's part of the gradient of the sub-layer's pre-norm output,
// all rows, from dh_rows (complete: the stream's rows this rank holds, all of them unless
// sequence parallelism gathers the others') — overwritten. The pre-norm's own backward
// waits until the tensor-parallel sum has completed it. With defer_weights the matrices' gradients
// are left for *_sublayer_weights, and what they need (dh, the middle gradient) stays in a's slot.
void attention_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B,
                                 int T, const void* dh_rows, void* d_normed, bool defer_weights,
                                 const RoutedTokens* routed = nullptr, int sublayer = -1);
void mlp_sublayer_backward(Model& m, const LayerOffsets& o, const SublayerActs& a, int B, int T,
                           const void* dh_rows, void* d_normed, bool defer_weights);
// The weight gradients a deferring backward left (N = B·T tokens).
void attention_sublayer_weights(Model& m, const LayerOffsets& o, const SublayerActs& a, int N);
void mlp_sublayer_weights(Model& m, const LayerOffsets& o, const SublayerActs& a, int N);

// The LM head's weight (the token embedding when tied) and its gradient.
const void* lm_head_weight(Model& m);
float* lm_head_grad(Model& m);

bool starts_loop_iteration(const Model& m, int position);
// With input injection, the sub-layer at which the prelude's output e is taken: right after the
// prelude's last output h_{P−1} joins the stream (P = the loop's first sub-layer), which is when
// sub-layer P − 1 + delay reads it, so no all-reduce has to be waited on early. −1 without.
int injection_sublayer(const Model& m);
// Whether the boundary state before sub-layer `sublayer` carries e: it was taken earlier and a
// later loop iteration still adds it.
bool boundary_carries_injected(const Model& m, int sublayer);

// Where sub-layer i of chunk c keeps its activations while it runs from slot `slot`: in the slot
// for a kept segment, else in the shared workspace at its place within its unit.
SublayerActs acts_of(const Model& m, const ModelChunk& c, int slot, int i);

// How a forward walk ends: kBoundary leaves the boundary state at its end (h_{e−d} added, the
// pending outputs complete); kOpen leaves every output pending for the caller (the LM head);
// kDiscard starts no tensor-parallel sum of the last `delay` outputs, which only the state at
// the end would need (a recomputation keeps the activations and nothing else).
enum class WalkEnd { kBoundary, kOpen, kDiscard };

// One forward pass over positions [begin, end) from the boundary state in `state` (or, at
// position 0, the embedded stream).
struct Walk {
  int begin = 0, end = 0, B = 0, T = 0;
  std::function<SublayerActs(int sublayer)> acts;  // where each sub-layer's activations go
  // Where the boundary state at a position's start is kept (null: nowhere): the stream, then the
  // delay − 1 outputs still pending (checkpoint_tensor).
  std::function<void*(int position)> checkpoint;
  WalkEnd end_as = WalkEnd::kBoundary;
  const RoutedTokens* routed = nullptr;  // a routed iteration's tokens (B = 1); null: dense
  bool loop_stats = false;  // the step's own forward: logging.loop_stats sees its states
};

// Where sub-layer i writes its output h_i, a partial sum over tp of `n` elements (all rows): its
// pending slot in `state`, completed there in place, or with sequence parallelism the full-rows
// buffer that is reduce-scattered into the slot. output_sum_start starts completing it.
void* output_partial(Model& m, const BoundaryState& state, int i, size_t n);
WorkPtr output_sum_start(Model& m, const BoundaryState& state, int i, size_t n);

// Pending output h_j of the boundary state at position p's start, inside a checkpoint of it.
void* checkpoint_tensor(const Model& m, void* checkpoint, int p, int j, size_t NC);
void forward_walk(Model& m, const BoundaryState& state, const Walk& w);

// logging.loop_stats (core/loop_stats.cpp): sums cleared for the passes to come; the state at
// the start of `position` (stream, plus `extra` when given) in a walk over [begin, end); the
// gradient of the state at the start of `position`.
void loop_stats_begin(Model& m);
void loop_stats_state(Model& m, int position, const void* stream, const void* extra, int begin,
                      int end, size_t NC);
void loop_stats_grad(Model& m, int position, const void* grad, size_t NC);

// What the backward of one chunk shares across its segments.
struct BackwardRun {
  Model& m;
  const ModelChunk& c;
  int slot, B, T;
  BoundaryState grad_state;  // the gradient of the state at the end of what is still to do
  bool defer;                // BackwardPart::kInput
  std::function<void(const ShardRange&)> report;
  const RoutedTokens* routed = nullptr;  // as Walk::routed
};

// Backward of positions [a, b) from the gradient of the state at b in run.grad_state to that of
// the state at a (core/model_walk.cpp).
void backward_range(BackwardRun& run, int a, int b, const std::function<SublayerActs(int)>& acts);

// A routed iteration's attention (core/model_routed.cpp): each sequence's rows among
// themselves, causal in their order, or (SHARED_FIRST after the first iteration) against the
// first iteration's keys and values, causal by position. Backward: d_qkv (overwritten) from
// d_out; in the first iteration under SHARED_FIRST with the later iterations' key/value
// gradient added.
void routed_attention_forward(Model& m, const SublayerActs& a, const RoutedTokens& routed,
                              int sublayer);
void routed_attention_backward(Model& m, const SublayerActs& a, const RoutedTokens& routed,
                               int sublayer, void* d_qkv, const void* d_out);

// Mixture-of-Recursions (core/model_routed.cpp): the forward of a whole routed model's layers
// from the embedded stream in `state` (every output added at the end), and its backward from
// the stream's gradient in run.grad_state down to the embedding's.
void routed_forward(Model& m, const ModelChunk& c, int slot, const BoundaryState& state, int B,
                    int T, float loss_grad_scale);
void routed_backward(BackwardRun& run);

// The unrolled list at model.loops iterations and this rank's chunks with their segments
// (core/model_layout.cpp).
void lay_out_chunks(Model& m);
// Cuts chunk c (begin, end set) into segments under m.recompute and model.backprop_loops, with
// its units (core/model_segments.cpp).
void plan_segments(const Model& m, ModelChunk& c);
// Positions [loop_begin, no_grad_end) are the iterations model.backprop_loops leaves without
// gradient (none: loop_begin).
int no_grad_end(const Model& m);

}  // namespace loom::model_detail
