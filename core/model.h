// The looped GPT: parameter layout in one flat buffer, activation memory planned once, and
// hand-written forward and backward.
//
// Unrolled layer list: prelude layers, `loops` iterations of the shared block, coda layers.
// Each layer is two sub-layers (attention, MLP), each with its own pre-norm. The residual stream
// `r` receives sub-layer i's output h_i right before sub-layer i + delay runs (delay 1: standard;
// delay 2: Ladder Residual), so between sub-layers the state is the stream plus `delay` pending
// outputs (under tensor parallelism each may still be an all-reduce in flight: pending_work).
// That pair — stream and pending outputs — is what a pipeline stage boundary or an activation
// checkpoint has to carry; the ladder continues across loop iterations. The shared block's
// gradients accumulate over every iteration that used it.
// Every kernel runs through the model's KernelBackend (kernels/backend.h); the model's code
// does not depend on which backend, nor on its activation type.
//
// Tensor parallelism (Megatron): with tp ranks each holds 1/tp of the heads (column-parallel
// QKV, row-parallel attention projection), of the MLP (column-parallel fc, row-parallel
// projection) and of the padded vocabulary (embedding and LM head rows). Each sub-layer's output
// is a partial sum that one all-reduce completes; in backward each sub-layer's partial input
// gradient (of its pre-norm's output) is completed the same way. Those all-reduces are async and
// waited on only when the result is first needed: with the standard residual at once, with Ladder
// Residual one sub-layer later, so each hides behind a sub-layer of compute (DESIGN.md).
//
//   loom::Model model = loom::model_create(cfg.model());   // or (cfg.model(), make_backend(…))
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

#include "kernels/backend.h"
#include "loom.pb.h"
#include "parallel/communicator.h"
#include "parallel/vocab_parallel.h"

namespace loom {

// This rank's place in the tensor-parallel group. comm is null when size is 1.
struct TensorParallel {
  int size = 1, rank = 0;
  Communicator* comm = nullptr;  // not owned
};

// One named tensor inside the flat parameter buffer (and, at the same offset, the gradient and
// optimizer buffers). Under tensor parallelism the buffer holds this rank's shard of it: the
// global tensor's dimension shard_dim, seen as shard_groups equal groups (3 for the fused QKV:
// q, k, v), has each group cut into tp equal slices, this rank holding slice `rank` of every
// group. A vocabulary dimension is padded up to a multiple of tp; padding rows stay zero.
struct ParamTensor {
  std::string name;                   // e.g. "block.0.attn.qkv.weight" (docs/checkpoint-format.md)
  std::vector<int64_t> shape;         // this rank's piece, row-major
  size_t offset = 0;                  // in floats, into the flat buffer
  size_t size = 0;                    // elements of this rank's piece
  bool decay = false;                 // AdamW weight decay applies (matrices and embeddings)
  std::vector<int64_t> global_shape;  // the whole tensor (checkpoints store it)
  int shard_dim = -1;                 // −1: replicated on every tensor-parallel rank
  int shard_groups = 1;
};

// Offsets (in floats) of one unique layer's tensors. Bias offsets of RMSNorm layers are unused.
struct LayerOffsets {
  size_t norm1_w, norm1_b, qkv_w, qkv_b, attn_proj_w, attn_proj_b;
  size_t norm2_w, norm2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b;
};

// Saved activations of one sub-layer application (offsets into the arena, in floats). Regions
// are planned at 4 bytes per element, so they also hold narrower (bf16) activations.
struct SublayerActs {
  size_t input;     // (B, T, C) the stream this sub-layer read
  size_t normed;    // (B, T, C) its pre-norm's output
  size_t mean;      // (B, T)    LayerNorm only
  size_t rstd;      // (B, T)
  size_t hidden;    // attention: qkv (B, T, 3C) after rotary; MLP: fc output (B, T, F)
  size_t hidden2;   // attention: pre-projection output (B, T, C); MLP: GELU output (B, T, F)
  size_t lse;       // attention: (B, H, T)
};

struct Model {
  config::ModelConfig config;
  // Runs every kernel. Shared, not owned: Model is a copyable value (model_arena_floats copies
  // it), and models on one device share its backend (stream, handles). Never null after
  // model_layout / model_create.
  std::shared_ptr<const kernels::KernelBackend> backend;
  int V = 0, C = 0, H = 0, F = 0, max_T = 0;  // global sizes
  TensorParallel tp;
  int Cl = 0, Hl = 0, Fl = 0;        // this rank's attention width, heads and MLP width (÷ tp)
  VocabShard vocab;                  // this rank's rows of the (padded) vocabulary
  int delay = 1;                     // 1 standard, 2 ladder
  int unique_layers = 0;             // prelude + block + coda
  std::vector<int> unrolled;         // unique layer of each unrolled position
  int loop_begin = 0;                // first unrolled position of loop iteration 0
  std::vector<int> first_use;        // unrolled position of each unique layer's first application

  std::vector<ParamTensor> tensors;  // in buffer order
  std::vector<LayerOffsets> layers;  // per unique layer
  size_t wte = 0, wpe = 0, norm_f_w = 0, norm_f_b = 0, lm_head = 0;
  size_t num_params = 0;
  std::vector<float> params, grads;  // (num_params)

  // Activation arena, sized by model_plan for at most plan_B × plan_T tokens.
  int plan_B = 0, plan_T = 0;
  size_t plan_attention_scratch_bytes = 0;  // planned; the backend's need must not grow
  std::vector<float> arena;
  std::vector<SublayerActs> acts;    // per sub-layer application, 2 per unrolled position
  size_t stream = 0;                 // (B, T, C) residual stream r
  size_t pending = 0;                // (delay, B, T, C) outputs not yet added to r
  size_t injected = 0;               // (B, T, C) prelude output e (input injection)
  size_t normed_f = 0, mean_f = 0, rstd_f = 0;  // final norm: (B, T, C), (B, T), (B, T)
  size_t d_normed_f = 0;             // (B, T, C) ∂loss/∂normed_f from the fused LM head
  size_t d_stream = 0, d_pending = 0, d_injected = 0;  // gradients of the above
  size_t d_normed = 0;               // (delay, B, T, C) partial pre-norm output gradients
  size_t d_hidden = 0, d_hidden2 = 0;  // per-sub-layer backward temporaries
  size_t rope_cos = 0, rope_sin = 0;  // (max_T, hd/2)
  size_t attention_scratch = 0, lm_head_scratch = 0;  // sized by the backend (0 bytes: unused)
  size_t norm_scratch = 0, embedding_scratch = 0;
  std::vector<int> inputs, targets;  // (B, T) of the last forward

  // Tensor-parallel all-reduces in flight: forward outputs and backward input gradients, one per
  // pending slot (at most `delay` each).
  std::vector<WorkPtr> pending_work, d_pending_work;
  double tp_wait_seconds = 0.0;      // time blocked on them, accumulated (reset by the caller)
};

// Builds the parameter layout for `cfg` (validated) with zeroed buffers: this rank's shards when
// tp.size > 1 (tp.size must divide n_heads and d_mlp). A null backend means the CPU backend.
// Forward, backward and model_last_logits are then collective over tp.comm.
Model model_create(const config::ModelConfig& cfg,
                   std::shared_ptr<const kernels::KernelBackend> backend = nullptr,
                   TensorParallel tp = {});

// The parameter layout alone (tensors, offsets, num_params), with no buffers: for planning.
Model model_layout(const config::ModelConfig& cfg,
                   std::shared_ptr<const kernels::KernelBackend> backend = nullptr,
                   TensorParallel tp = {});

// Floats model_plan(B, T) would allocate for the activation arena with the model's backend (on
// the CPU: at the current thread count).
size_t model_arena_floats(const Model& model, int B, int T);

// GPT-2 initialisation from a seeded generator: weights N(0, init_std), output projections
// N(0, init_std / sqrt(2 · unrolled layers)), biases 0, norm weights 1. Each tensor is drawn
// whole and this rank keeps its shard, so every tensor-parallel layout starts from the same
// global weights.
void model_init(Model& model, uint64_t seed);

// Sizes the activation arena for micro-batches of up to B sequences of up to T tokens. Called
// once; forward and backward then allocate nothing.
void model_plan(Model& model, int B, int T);

// Forward of a (B, T) micro-batch. With targets, returns the mean cross-entropy; when
// loss_grad_scale > 0 the LM head also stores ∂(loss_sum · loss_grad_scale)/∂normed_f and
// accumulates the head's weight gradient, ready for model_backward. Without targets returns 0.
double model_forward(Model& model, const int* inputs, const int* targets, int B, int T,
                     float loss_grad_scale);

// Called by model_backward when the gradients [offset, offset + count) of the flat buffer have
// received their last contribution of this backward (data-parallel buckets start reducing then).
// Ranges come in a fixed order, cover the buffer exactly once, and end with the embeddings.
using GradsFinalFn = std::function<void(size_t offset, size_t count)>;

// Accumulates parameter gradients of the last forward (which must have had loss_grad_scale > 0).
void model_backward(Model& model, int B, int T, const GradsFinalFn& on_grads_final = {});

// Logits (B, V) at the last position of each sequence, after model_forward without targets
// (collective over tp: every rank gets all V).
void model_last_logits(Model& model, int B, int T, float* logits);

// Floating-point operations of one training step per token (forward + backward = 3 × forward
// matmul and attention FLOPs, the causal half of attention counted), for throughput figures.
double model_train_flops_per_token(const Model& model, int T);

}  // namespace loom
