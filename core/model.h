// The looped GPT: parameter layout in one flat buffer, activation memory planned once, and
// hand-written forward and backward over a range of the unrolled layer list.
//
// Unrolled layer list: prelude layers, `loops` iterations of the shared block, coda layers.
// Each layer is two sub-layers (attention, MLP), each with its own pre-norm. The residual stream
// `r` receives sub-layer i's output h_i right before sub-layer i + delay runs (delay 1: standard;
// delay 2: Ladder Residual), so between sub-layers the state is the stream plus `delay` pending
// outputs (under tensor parallelism each may still be an all-reduce in flight: tp_sums),
// plus, with input injection, the prelude's output e. That is the *boundary state*: a rank runs
// its *chunks* (contiguous ranges of unrolled positions: the whole list, or its pipeline pieces)
// from a boundary state it is given and hands one back, and backward does the same with the
// state's gradient (docs/architecture.md). The ladder continues across loop iterations and
// chunks. The shared block's gradients accumulate over every iteration that used it.
// Every kernel runs through the model's KernelBackend (kernels/backend.h); the model's code
// does not depend on which backend, nor on its activation type.
//
// Tensor parallelism (Megatron): with tp ranks each holds 1/tp of the heads (column-parallel
// QKV, row-parallel attention projection), of the MLP (column-parallel fc, row-parallel
// projection) and of the padded vocabulary (embedding and LM head rows). Each sub-layer's output
// is a partial sum that one all-reduce completes; in backward each sub-layer's partial input
// gradient (of its pre-norm's output) is completed the same way. Those all-reduces are async and
// waited on only when the result is first needed: with the standard residual at once, with Ladder
// Residual one sub-layer later, so each hides behind a sub-layer of compute. With sequence
// parallelism inside tp (TensorParallel::sequence) the stream and the norms hold B·T / tp rows
// per rank: the outputs are reduce-scattered and each region's input all-gathered instead.
//
// Pipeline parallelism: a rank's model holds only the tensors its chunks use (the shared block
// once, however many iterations it runs); every tensor keeps its global index, so checkpoints
// and initialisation see the same global tensors at any layout.
//
//   loom::Model model = loom::model_create(cfg.model());   // or (cfg.model(), backend, tp, stage)
//   loom::model_init(model, seed);
//   loom::model_plan(model, B, T);                    // activation arena, once
//   double loss = loom::model_forward(model, inputs, targets, B, T, 1.0f / (B * T));
//   loom::model_backward(model, B, T);               // grads += ∂loss/∂params
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/stage_plan.h"
#include "core/trace.h"
#include "kernels/backend.h"
#include "kernels/device_array.h"
#include "loom.pb.h"
#include "parallel/communicator.h"
#include "parallel/grad_windows.h"
#include "parallel/ring_attention.h"
#include "parallel/tensor_parallel.h"
#include "parallel/ulysses_attention.h"
#include "parallel/vocab_parallel.h"

namespace loom {

// This rank's place in the sequence-parallel group: the model runs T / size rows of every
// sequence, at the global positions `layout` gives them (parallel/ring_attention.h), and
// attention rings over comm. comm is null when size is 1.
struct SequenceParallel {
  int size = 1, rank = 0;
  Communicator* comm = nullptr;  // not owned
  SequenceLayout layout = SequenceLayout::kZigzag;
  SequenceMethod method = SequenceMethod::kRing;  // parallel.sequence_method
};

// This rank's place in the pipeline: the stage plan and its pipeline coordinate.
struct PipelineStage {
  StagePlan plan;  // empty bounds: the whole model on one rank
  int rank = 0;
};

// What a parameter tensor is, so that no decision is made from its name.
// kLoopLora: a per-iteration low-rank factor of a shared block layer (model.loop_lora_rank).
// kRouter: Mixture-of-Recursions' router (model.recursion_router), with the embedding's range.
enum class ParamRole {
  kTokenEmbedding,
  kPositionEmbedding,
  kLayer,
  kLoopLora,
  kRouter,
  kFinalNorm,
  kLmHead
};
enum class ParamInit { kNormal, kNormalScaled, kOnes, kZeros };  // kNormalScaled: output projections

// One named tensor inside the flat parameter buffer (and, at the same offset, the gradient and
// optimizer buffers). Under tensor parallelism the buffer holds this rank's shard of it: the
// global tensor's dimension shard_dim, seen as consecutive groups (the fused QKV's q, k and v —
// k and v narrower with grouped-query attention —, SwiGLU's gate and up), has each group cut
// into tp equal slices, this rank holding slice `rank` of every group. A vocabulary dimension is
// padded up to a multiple of tp; padding rows stay zero.
struct ParamTensor {
  std::string name;                   // e.g. "block.0.attn.qkv.weight" (docs/checkpoint-format.md)
  std::vector<int64_t> shape;         // this rank's piece, row-major
  size_t offset = 0;                  // in floats, into the flat buffer
  size_t size = 0;                    // elements of this rank's piece
  bool decay = false;                 // AdamW weight decay applies (matrices and embeddings)
  std::vector<int64_t> global_shape;  // the whole tensor (checkpoints store it)
  int shard_dim = -1;                 // −1: replicated on every tensor-parallel rank
  std::vector<int64_t> shard_groups;  // global size of each group of shard_dim (empty: one)
  ParamRole role = ParamRole::kLayer;
  int layer = -1;  // unique layer index (kLayer, kLoopLora)
  ParamInit init = ParamInit::kZeros;
  int global_index = 0;               // position in the whole model's tensor list
  // Pipeline ranks holding a replica (the shared block on every stage that runs it, a tied
  // embedding on the first and last); their gradients are summed across them. The lowest holds
  // the copy counted in the gradient norm.
  std::vector<int> pp_holders;
  int iteration = -1;  // kLoopLora: the loop iteration it serves
};

// A tensor the model does not have (a bias with model.bias false, a norm's bias under RMSNorm).
constexpr size_t kNoTensor = static_cast<size_t>(-1);

// One linear layer's low-rank delta for one loop iteration: A (r, in) and B (out, r), both
// kNoTensor outside the loop or without model.loop_lora_rank.
struct LoraFactors {
  size_t a = kNoTensor, b = kNoTensor;
  bool present() const { return a != kNoTensor; }
};

// Offsets (in floats) of one unique layer's tensors; kNoTensor for the ones it does not have. At
// an unrolled position of the loop (layer_at) also that iteration's LoRA factors.
struct LayerOffsets {
  size_t norm1_w, norm1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b;
  size_t norm2_w, norm2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
  LoraFactors qkv_lora, attn_proj_lora, fc_lora, mlp_proj_lora;
};

// Saved activations of one sub-layer application (offsets in floats into its slot). Activation
// regions are planned at the backend's activation size (half a float each for bf16); the
// statistics (mean, rstd, lse) are fp32.
struct SublayerActs {
  size_t input;     // (B, T, C) the stream this sub-layer read
  size_t normed;    // (B, T, C) its pre-norm's output
  size_t mean;      // (B, T)    LayerNorm only
  size_t rstd;      // (B, T)
  size_t hidden;    // attention: qkv (B, T, C + 2·Ckv) after rotary; MLP: fc output (B, T, F),
                    // with SwiGLU (B, T, 2F): gate then up
  size_t hidden2;   // attention: pre-projection output (B, T, C); MLP: activation (B, T, F)
  size_t lse;       // attention: (B, H, T)
  // With backward split (B now, W later): what the weight gradients need besides the above.
  size_t d_out;     // (B, T, C) the gradient of the sub-layer's output h
  size_t d_mid;     // attention: of qkv after rotary; MLP: of the fc output
  // With LoRA: u = A x of the sub-layer's first linear (qkv, fc) and of its projection, (B, T, r).
  size_t lora_in, lora_proj;
};

// A run of a chunk's unrolled positions under one rule. Its *units* are the ranges recomputation
// works in: one prelude or coda layer, or one loop iteration (cut by the chunk's edges).
//   kKept:       every sub-layer's activations stay in the slot (Recompute::kNone).
//   kRecomputed: only the boundary state at its start stays in the slot; backward runs its
//                forward again, unit by unit through the shared workspace, right before its
//                backward — with more than one unit (kSqrt) first the segment once, keeping each
//                unit's start state in the shared inner checkpoints.
//   kNoGrad:     iterations before model.backprop_loops' cut: forward through the workspace,
//                nothing kept; backward gives them no gradient (their end state is a constant).
struct ChunkSegment {
  enum Kind { kKept, kRecomputed, kNoGrad };
  Kind kind = kKept;
  int begin = 0, end = 0;       // unrolled positions [begin, end)
  std::vector<int> units;       // where each unit starts, ascending (units[0] = begin)
  size_t checkpoint = 0;        // kRecomputed: its start's boundary state, within the slot
};

// A contiguous range of unrolled positions this rank runs (a pipeline piece), with the layout of
// its saved activations inside an activation slot.
struct ModelChunk {
  int begin = 0, end = 0;  // unrolled positions [begin, end)
  int piece = 0;           // global pipeline stage
  bool first = false;      // starts at position 0: runs the embedding
  bool last = false;       // ends the list: runs the final norm, LM head and cross-entropy
  // The boundary state at the chunk's start / end includes e (input injection).
  bool injected_in = false, injected_out = false;
  std::vector<SublayerActs> acts;  // sub-layers 2·begin .. 2·end − 1, offsets within a slot
                                   // (of kKept segments' sub-layers; the others are unused)
  std::vector<ChunkSegment> segments;  // covering [begin, end) in order
  std::vector<int> segment_of;     // per position (from begin): its segment
  std::vector<int> unit_of;        // per position (from begin): its unit's start position
  bool keeps_injected = false;     // a recomputed segment needs e: kept once, at injected_kept
  size_t injected_kept = 0;        // within a slot
  size_t final_input = 0, mean_f = 0, rstd_f = 0, d_normed_f = 0;  // within a slot (last only)
  // Mixture-of-Recursions: per loop iteration the stream at its start (B, T, C) and the block's
  // output on the tokens it ran (at most (B, T, C)), within a slot.
  std::vector<size_t> routed_stream, routed_out;
  size_t slot_floats = 0;  // the chunk's saved activations
};

// What the model is: its sizes, the unrolled layer list and how many loops it runs.
struct ModelSpec {
  config::ModelConfig config;
  int V = 0, C = 0, H = 0, F = 0, max_T = 0;  // global sizes
  int Hkv = 0;                                // key/value heads (H unless grouped-query attention)
  int delay = 1;                     // 1 standard, 2 ladder
  int unique_layers = 0;             // prelude + block + coda
  // Iterations of the block the model runs now (model.loops unless model_set_loops changed it),
  // and the range the arena is planned for.
  int loops = 0, plan_loops_min = 0, plan_loops_max = 0;
  std::vector<int> unrolled;         // unique layer of each unrolled position
  int loop_begin = 0;                // first unrolled position of loop iteration 0
};

// Where this rank's parameters live in the flat buffers (the same offsets in params, grads and
// the optimizer's moments).
struct ParamLayout {
  std::vector<ParamTensor> tensors;  // this rank's, in buffer order (global order, a subset)
  size_t global_tensors = 0;         // tensors of the whole model
  std::vector<LayerOffsets> layers;  // per unique layer (offsets unused where not held)
  // model.loop_lora_rank > 0: [iteration][block layer] the factors of its four linear layers
  // (qkv_lora .. mlp_proj_lora set; the rest unused).
  std::vector<std::vector<LayerOffsets>> lora;
  std::vector<ShardRange> layer_ranges;  // per unique layer, its tensors in the buffer (or empty)
  ShardRange embedding_range, head_range;  // wte (+ wpe); norm_f (+ lm_head)
  size_t wte = 0, wpe = 0, norm_f_w = 0, lm_head = 0;
  size_t norm_f_b = kNoTensor;  // LayerNorm only
  size_t router = kNoTensor;  // (loops, C): expert choice's row r scores iteration r's tokens;
                              // token choice's rows give each token's logits over the depths
  bool has_wte = false;
  size_t num_params = 0;
};

// This rank's place in the parallel layout and the communication the layers start and finish.
struct ParallelContext {
  TensorParallel tp;
  SequenceParallel sp;
  RingAttention ring;          // sp > 1: attention's ring over sp.comm, and its timers
  UlyssesAttention ulysses;    // sp > 1 with SequenceMethod::kUlysses: its all-to-alls
  int Cl = 0, Hl = 0, Fl = 0;  // this rank's attention width, heads and MLP width (÷ tp)
  int Hkvl = 0, Ckvl = 0;      // this rank's key/value heads and their width (÷ tp)
  VocabShard vocab;            // this rank's rows of the (padded) vocabulary
  PipelineStage stage;
  std::vector<ModelChunk> chunks;  // this rank's, in unrolled order
  // Per unique layer: the lowest position this rank runs it at (−1: not held here). Its
  // gradients are final after that position's backward in the step's last micro-batch.
  std::vector<int> first_use;
  // Tensor-parallel all-reduces in flight: forward outputs and backward input gradients, one per
  // pending slot (at most `delay` each).
  TensorParallelSums tp_sums;
  TraceRecorder* trace = nullptr;  // optional, not owned: records the waits that blocked
};

// The activation arena's plan (model_plan), offsets and sizes in floats: sized for at most
// B × T tokens, `slots` activation slots (one micro-batch's saved activations of one
// chunk), `boundaries` boundary buffers (a boundary state or its gradient, in flight or being
// worked on) and shared temporaries (ArenaTemporaries).
struct ArenaPlan {
  int B = 0, T = 0, slots = 0, boundaries = 0;
  bool split_backward = false;       // slots also keep what a later weight-gradient pass needs
  Recompute recompute = Recompute::kNone;
  size_t attention_scratch_bytes = 0;  // planned; the backend's need must not grow
  size_t slot_floats = 0, slots_base = 0, boundary_floats = 0, boundaries_base = 0;
  size_t shared_floats = 0;          // everything else in the arena
  // Recomputation (shared by every slot): one unit's activations (work_acts, per sub-layer from
  // the unit's start, absolute offsets), the live state a recomputation runs from (a boundary
  // buffer's size) and kSqrt's inner checkpoints (inner_capacity of them, checkpoint_floats each:
  // the stream and delay − 1 pending outputs).
  std::vector<SublayerActs> work_acts;
  size_t recompute_state = 0, inner_checkpoints = 0, checkpoint_floats = 0;
  int inner_capacity = 0;
  // The (slot, chunk) whose forward left its last unit's activations in the workspace, untouched
  // since (−1: none): its backward uses them instead of recomputing that unit.
  int work_slot = -1, work_chunk = -1;
};

// Where the arena's shared temporaries are (offsets in floats).
struct ArenaTemporaries {
  size_t normed_f = 0;               // (B, T, C) final norm output (the LM head's input)
  size_t d_normed = 0;               // (delay, B, T, C) partial pre-norm output gradients
  size_t d_hidden = 0, d_hidden2 = 0;  // per-sub-layer backward temporaries
  size_t rope_cos = 0, rope_sin = 0;   // (plan.T, hd/2), row t: the angles of position t
                                       // (with sp > 1: of positions[t])
  // sp > 1: the global position of each local row (planned for plan.T rows), the ring's
  // workspace (RingWorkspace: key/value blocks and gradients, then the block lse) and, for
  // learned positions, wpe's rows at `positions` and their gradient, (plan.T, C) each.
  std::vector<int> positions;
  size_t ring_work = 0, ring_lse = 0, wpe_local = 0, dwpe_local = 0;
  size_t ulysses_work = 0;  // sp > 1 with Ulysses: its workspace instead of the ring's
  size_t attention_scratch = 0, lm_head_scratch = 0;  // sized by the backend (0 bytes: unused)
  // LoRA: a linear layer's delta B·u before it is added, or an input gradient's part v·A,
  // (B, T, widest); and v = dy·B, (B, T, r).
  size_t lora_out = 0, lora_mid = 0;
  size_t norm_scratch = 0, embedding_scratch = 0;
  // Mixture-of-Recursions: a routed iteration's boundary state (its one pending output, then its
  // stream: (B, T, C) each at most), the rotary angles of its tokens (B·T, hd/2 each), and the
  // router's logits (B·T, loops) as activations and in fp32.
  size_t routed_state = 0, routed_cos = 0, routed_sin = 0, router_logits = 0, router_logits32 = 0;
  // model.recursion_kv SHARED_FIRST: the gradient of the first iteration's keys and values the
  // later iterations leave, (block_layers, B·T, qkv columns).
  size_t shared_dqkv = 0;
  // parallel.tp_sequence_parallel: the full-rows partial sums of the sub-layers' outputs and of
  // their pre-norms' output gradients before they are reduce-scattered, (delay, B, T, C) each,
  // and the all-gathered rows a tensor-parallel region reads: a pre-norm's output (forward, and
  // again in backward), an output gradient or the embedding's, (B, T, C) each.
  size_t partial = 0, d_partial = 0, gathered = 0, gathered_grad = 0;
};

// Mixture-of-Recursions: one loop iteration's routing of one micro-batch. Host copies; rows and
// gates are also on the device, at `device` in ModelRouting's arrays.
struct LoopRoute {
  std::vector<int> rows;      // the tokens the iteration runs, b·T + t, ascending
  std::vector<int> lengths;   // per sequence: how many of them are its
  std::vector<float> gates;   // per row: the gate of its update
  std::vector<int> scored;    // expert choice: the tokens the router scored (the active ones)
  std::vector<float> logits;  // expert choice: (B·T) this iteration's router logits; token
                              // choice (iteration 0 only): (B·T, loops)
  std::vector<int> depth;     // token choice (iteration 0 only): each token's last iteration
  size_t device = 0;
};

// The routing of the micro-batches in flight, and what a step's passes routed.
struct ModelRouting {
  std::vector<std::vector<LoopRoute>> routes;  // [slot][iteration]
  std::vector<float> grad_scale;               // [slot]: the forward's loss_grad_scale
  kernels::DeviceArray<int> rows;              // (slots, loops, B·T)
  kernels::DeviceArray<float> gates;           // (slots, loops, B·T)
  kernels::DeviceArray<float> scratch;         // (2 · B·T · loops) fp32
  // Since model_begin_passes: tokens each iteration ran, tokens routed, the auxiliary loss's
  // value summed over micro-batches, micro-batches, and the forward FLOPs the layers ran.
  std::vector<double> active;
  double tokens = 0, aux_loss = 0, micro_batches = 0, forward_flops = 0;
};

// The model's memory: the backend's allocations (device memory on a device backend: the host
// reaches it through upload and download only).
struct ModelBuffers {
  // Runs every kernel and owns the buffers' memory. Shared: models on one device share its
  // backend (stream, handles). Never null after model_layout / model_create.
  std::shared_ptr<const kernels::KernelBackend> backend;
  // (num_params) fp32; grads is empty under ZeRO-2, whose gradients are in grad_windows.
  kernels::DeviceArray<float> params, grads;
  GradWindows* grad_windows = nullptr;  // ZeRO-2 (not owned): where the gradients are
  // A backend with narrower activations (bf16): the copy of params in its activation type that
  // the kernels read (model_refresh_weights). Empty on an fp32 backend, which reads params.
  kernels::DeviceArray<unsigned char> weights;
  kernels::DeviceArray<float> arena;      // ArenaPlan's offsets are into it
  kernels::DeviceArray<int> slot_tokens;  // (slots, B, T) inputs of each slot's micro-batch
  kernels::DeviceArray<int> targets;      // (B, T) the targets of the micro-batch in forward
};

// The model: a few parts, each with one job. Layers and chunks read what they need from the part
// that owns it.
// logging.loop_stats (docs/architecture.md, "Loop statistics"): this rank's sums over its tokens
// since model_begin_passes, per iteration r of the shared block, gathered while `on` by the
// forward and backward (not by recomputation or validation). Where an iteration's start and end
// fall in different walks (a pipeline cut inside it), its change is not measured here.
struct LoopStatSums {
  bool on = false;
  std::vector<double> stream_squares;    // Σ s_r² over the state entering iteration r
  std::vector<double> change_squares;    // Σ (s_{r+1} − s_r)², where measured
  std::vector<double> grad_squares;      // Σ (∂loss/∂s_r)², the step's scaled gradient
  std::vector<double> entries, changes;  // walks that saw s_r; that measured its change
  // Host copies: the state entering the iteration whose change is measured (`open`), scratch.
  int open = -1;
  std::vector<float> entry, host;
  kernels::DeviceArray<float> widened;  // (B·T·C) a state in fp32 on its way to the host
};

// What this rank's passes did since model_begin_passes, beyond what the model's shape says.
struct PassCounters {
  // Forward FLOPs run again by train.recompute (model_recompute_flops).
  double recompute_flops = 0;
  LoopStatSums loops;
};

struct Model {
  ModelSpec spec;
  ParamLayout layout;
  ParallelContext par;
  ArenaPlan plan;
  ArenaTemporaries temps;
  ModelBuffers buf;
  ModelRouting routing;  // model.recursion_router only
  PassCounters passes;
};

// Builds the parameter layout for `cfg` (validated) with zeroed buffers: this rank's shards when
// tp.size > 1 (tp.size must divide n_heads and d_mlp), and only the tensors of this pipeline
// rank's chunks. A null backend means the CPU backend. Forward, backward and model_last_logits
// are then collective over tp.comm, and with sp.size > 1 forward and backward over sp.comm:
// they take this rank's T = seq_len / sp rows of each sequence (sequence_select).
// whole_gradients false (ZeRO-2): no gradient buffer; the caller sets buf.grad_windows.
Model model_create(const config::ModelConfig& cfg,
                   std::shared_ptr<const kernels::KernelBackend> backend = nullptr,
                   TensorParallel tp = {}, PipelineStage stage = {}, SequenceParallel sp = {},
                   bool whole_gradients = true);

// The units ZeRO-2 keeps gradient windows for (parallel/grad_windows.h): the ranges backward
// reports final, ascending. Step-long: the embedding, the head, and layers run at several
// unrolled positions (the shared block of a looped model).
std::vector<GradUnitSpec> model_grad_units(const Model& m);

// The parameter layout alone (tensors, offsets, num_params), with no buffers: for planning.
Model model_layout(const config::ModelConfig& cfg,
                   std::shared_ptr<const kernels::KernelBackend> backend = nullptr,
                   TensorParallel tp = {}, PipelineStage stage = {}, SequenceParallel sp = {});

// Floats model_plan(B, T, slots, boundaries) would allocate for the activation arena with the
// model's backend (on the CPU: at the current thread count): in all, per slot, per boundary
// buffer, and the shared temporaries.
struct ArenaSizes {
  size_t total = 0, slot = 0, boundary = 0, shared = 0;
};
ArenaSizes model_arena_sizes(const Model& model, int B, int T, int slots = 1, int boundaries = 1,
                             bool split_backward = false, Recompute recompute = Recompute::kNone);

// Before a step's (or an evaluation's) passes: the tensor-parallel and ring wait timers start
// from zero, and `trace` (null: none) records the waits that block (the ring's as "sp wait").
void model_begin_passes(Model& model, TraceRecorder* trace);
// Seconds the passes since model_begin_passes blocked on tensor-parallel sums and the ring.
double model_comm_wait_seconds(const Model& model);

// After params changed (init, a checkpoint read, an optimizer step, a broadcast): the weight
// copy the kernels read follows them (nothing to do on an fp32 backend).
void model_refresh_weights(Model& model);

// GPT-2 initialisation from a seeded generator: weights N(0, init_std), output projections
// N(0, init_std / sqrt(2 · unrolled layers)), biases 0, norm weights 1. Each global tensor is
// drawn whole, in global order, and this rank keeps its shard of the ones it holds, so every
// layout starts from the same global weights.
void model_init(Model& model, uint64_t seed);

// Sizes the activation arena for micro-batches of up to B sequences of up to T tokens (with
// sp > 1: exactly T, this rank's rows of sequences of T · sp tokens), with
// `slots` micro-batches' activations in flight and `boundaries` boundary buffers; with
// split_backward each slot also keeps the output gradients a later weight-gradient pass needs
// (BackwardPart). Called once; forward and backward then allocate nothing.
// With `recompute` a slot keeps boundary states instead of activations where the policy says
// (with split_backward also the recomputed sub-layers' output gradients: the weight pass runs
// their forward again), and the arena holds one unit's activations for recomputation.
// Planned for every loop count in [plan_loops_min, plan_loops_max] (model_set_loop_range).
void model_plan(Model& model, int B, int T, int slots = 1, int boundaries = 1,
                bool split_backward = false, Recompute recompute = Recompute::kNone);

// Before model_plan: the loop counts the arena must serve (default: model.loops only). The model
// then runs max_loops until model_set_loops says otherwise.
void model_set_loop_range(Model& model, int min_loops, int max_loops);
// The model runs `loops` iterations of the block from now on (a single pipeline stage; after
// model_plan within the planned range). Parameters are per unique layer, so nothing else changes.
void model_set_loops(Model& model, int loops);

// The boundary state between two unrolled positions — what a pipeline stage hands on, and what
// activation recomputation will keep — inside a boundary buffer, for N = B·T tokens. Between
// sub-layers s − 1 and s (s even: a position's start) it is the stream r (N, C) with h_{s−delay}
// already added; the delay − 1 outputs still pending, h_i in slot i % delay (complete: their
// tensor-parallel sums done; none for the standard residual, h_{s−1} for the ladder); and e
// (N, C), the prelude output input injection adds, where the boundary carries it. Backward uses
// the same layout for their gradients. Slot 0, which the walk uses for h_{s−delay}, comes first
// in the buffer, so the state itself (the *message*: stream, slots 1 .. delay − 1, e) is
// contiguous and travels as one send.
struct BoundaryState {
  void* base = nullptr;
  size_t NC = 0;           // elements of one (B, T, C) tensor
  int delay = 1;
  size_t element_bytes = 4;
  void* stream() const { return at(1); }
  void* pending(int sublayer) const {
    const int slot = sublayer % delay;
    return at(slot == 0 ? 0 : 1 + slot);
  }
  void* injected() const { return at(1 + delay); }

 private:
  void* at(size_t tensor) const { return static_cast<char*>(base) + tensor * NC * element_bytes; }
};
BoundaryState model_boundary_state(Model& model, int index, int B, int T);

// Rows of the residual stream (and of everything between the tensor-parallel regions) this rank
// holds for (B, T) tokens: B·T, or with parallel.tp_sequence_parallel its B·T / tp of them.
size_t model_stream_rows(const Model& model, int B, int T);

// Elements of the boundary state at `chunk`'s start (at_end false) or end, for (B, T) tokens:
// the stream, delay − 1 pending outputs and, when the boundary carries it, e.
size_t model_boundary_count(const Model& model, int chunk, bool at_end, int B, int T);
// The boundary state in boundary buffer `index` for (B, T) tokens: model_boundary_count elements
// from here are sent or received (BoundaryState::stream()).
float* model_boundary(Model& model, int index, int B, int T);

// Forward of chunk `chunk` over a (B, T) micro-batch, saving its activations in slot `slot`.
// Boundary buffer `boundary` holds the state at the chunk's start (ignored for the first chunk,
// which embeds `inputs`) and the state at its end afterwards (to be sent on). For the last
// chunk, with targets, returns the mean cross-entropy; when loss_grad_scale > 0 the LM head also
// stores ∂(loss_sum · loss_grad_scale)/∂normed_f and accumulates the head's weight gradient,
// ready for backward. Otherwise returns 0.
double model_forward_chunk(Model& model, int chunk, int slot, int boundary, const int* inputs,
                           const int* targets, int B, int T, float loss_grad_scale);

// Called by backward when the gradients [offset, offset + count) of the flat buffer have
// received their last contribution of this backward (data-parallel buckets start reducing then).
// Ranges come in a fixed order and never overlap.
using GradsFinalFn = std::function<void(size_t offset, size_t count)>;

// What a backward call computes: everything; or (the model planned with split_backward) the
// input gradients (with the norms' and embeddings' parameter gradients, which are cheap), and
// later, from what that left in the slot, the matrices' and their biases' weight gradients (a
// recomputed segment's forward runs again for them: collective over tp and sp like any forward).
enum class BackwardPart { kAll, kInput, kWeight };

// Backward of chunk `chunk` from slot `slot`: accumulates parameter gradients. Boundary buffer
// `boundary` holds the gradient of the chunk's end state (ignored for the last chunk, which
// starts from the loss) and the gradient of its start state afterwards (kWeight uses none).
// With on_grads_final (the step's last micro-batch), kAll and kWeight report each range once it
// is final on this rank (kInput reports nothing: the ranges are final only after kWeight).
void model_backward_chunk(Model& model, int chunk, int slot, int boundary, int B, int T,
                          const GradsFinalFn& on_grads_final = {},
                          BackwardPart part = BackwardPart::kAll);

// The whole model on one rank (a single chunk, slot 0, boundary 0): forward of a (B, T)
// micro-batch, returning the mean cross-entropy with targets (0 without), and its backward,
// which reports ranges covering the buffer exactly once, ending with the embeddings.
double model_forward(Model& model, const int* inputs, const int* targets, int B, int T,
                     float loss_grad_scale);
void model_backward(Model& model, int B, int T, const GradsFinalFn& on_grads_final = {});

// Logits (B, V) at the last position of each sequence, after model_forward without targets
// (collective over tp: every rank gets all V).
void model_last_logits(Model& model, int B, int T, float* logits);

// Mixture-of-Recursions: what the passes since model_begin_passes routed — the fraction of the
// tokens each loop iteration ran, the auxiliary loss (mean over micro-batches) and the training
// FLOPs per token they took (3 × the forward's). Empty fractions without a router or passes.
struct RoutingStats {
  std::vector<double> active_fraction;
  double aux_loss = 0, train_flops_per_token = 0;
};
RoutingStats model_routing_stats(const Model& model);

// Model FLOPs of one training step per token at sequence length T: forward + backward = 3 ×
// forward matmul and attention FLOPs, attention over all T keys (Megatron's convention; no
// recomputation), what MFU divides (docs/architecture.md, "Utilisation"). A routed model
// (model.recursion_router) counts what the passes since model_begin_passes ran (attention's
// causal half), or, before any, every token at every iteration.
double model_train_flops_per_token(const Model& model, int T);
// Forward model FLOPs per token of unrolled position p in sequences T long: its layer's, and in
// the loop with model.loop_lora_rank its LoRA factors'.
double position_model_flops(const Model& model, int p, int T);
// This rank's share of the forward FLOPs train.recompute ran again since model_begin_passes (in
// the same convention): with model FLOPs, the hardware FLOPs.
double model_recompute_flops(const Model& model);

// logging.loop_stats: gather this rank's loop statistics in the passes from the next
// model_begin_passes on (`on`), or stop (before validation).
void model_collect_loop_stats(Model& model, bool on);
// The sums gathered, 5 per iteration (stream, change, gradient squares; entries, changes
// measured), for an all-reduce; loop_stats_of turns the sums over every rank into figures.
std::vector<double> model_loop_stat_sums(const Model& model);
struct LoopStats {
  std::vector<double> rms;        // RMS of the state entering iteration r
  std::vector<double> change;     // ‖s_{r+1} − s_r‖ / ‖s_r‖ (NaN where not measured)
  std::vector<double> grad_norm;  // ‖∂loss/∂s_r‖ of the step's mean loss
};
// `sums` over every rank of a step of `tokens` tokens (global batch × seq_len) of C channels,
// its gradients scaled on each rank for its share of `replicas` (dp × sp) ranks.
LoopStats loop_stats_of(const std::vector<double>& sums, double tokens, int C, int replicas);

}  // namespace loom
