// The whole model's gradient against central finite differences of its loss, tensor by tensor,
// for the standard, ladder (looped, input injection) and RMSNorm + rotary variants.
#include <gtest/gtest.h>

#include <cmath>

#include "core/config.h"
#include "core/model.h"
#include "base/rng.h"
#include "kernels/cpu/threads.h"
#include "kernels/emulated/backend.h"
#ifdef LOOM_WITH_CUDA
#include "kernels/cuda/backend.h"
#endif

namespace loom {
namespace {

config::ModelConfig tiny_model(const std::vector<std::string>& overrides) {
  config::RunConfig cfg;
  for (const char* o :
       {"model.vocab_size=16", "model.d_model=8", "model.n_heads=2", "model.d_mlp=16",
        "model.max_seq_len=6", "model.prelude_layers=1", "model.block_layers=1",
        "model.loops=2", "model.coda_layers=1", "model.init_std=0.3"})
    apply_override(cfg, o);
  for (const std::string& o : overrides) apply_override(cfg, o);
  return cfg.model();
}

// For every tensor, compares the gradient's component along a random unit direction inside that
// tensor with (L(p + εu) − L(p − εu)) / 2ε. Directional checks keep the fp32 loss's rounding
// error (~1e-7 · L / ε) far below the quantity compared.
// Runs on `backend` (null: the CPU), reaching the model's memory through upload and download only.
void check_gradients(const config::ModelConfig& cfg,
                     std::shared_ptr<const kernels::KernelBackend> backend = nullptr) {
  kernels::cpu::init_threads(1);
  const int B = 2, T = 5;
  Model model = model_create(cfg, std::move(backend));
  model_init(model, 3);
  Rng rng{11};
  // Norm weights away from 1 and biases away from 0, so their gradients are not special.
  std::vector<float> params = model.buf.params.download();
  for (float& p : params) p += static_cast<float>(0.1 * rng.normal());
  model.buf.params.upload(params);
  model_plan(model, B, T);
  std::vector<int> inputs(B * T), targets(B * T);
  for (int& x : inputs) x = static_cast<int>(rng.below(model.spec.V));
  for (int& x : targets) x = static_cast<int>(rng.below(model.spec.V));

  model_forward(model, inputs.data(), targets.data(), B, T, 1.0f / (B * T));
  model_backward(model, B, T);
  const std::vector<float> grads = model.buf.grads.download();

  const double eps = 1e-2;
  for (const ParamTensor& t : model.layout.tensors) {
    std::vector<double> u(t.size);
    double norm = 0.0;
    for (double& x : u) {
      x = rng.normal();
      norm += x * x;
    }
    norm = std::sqrt(norm);
    double analytic = 0.0;
    for (size_t i = 0; i < t.size; ++i) analytic += (u[i] /= norm) * grads[t.offset + i];

    auto loss_at = [&](double step) {
      std::vector<float> moved = params;
      for (size_t i = 0; i < t.size; ++i)
        moved[t.offset + i] = static_cast<float>(params[t.offset + i] + step * u[i]);
      model.buf.params.upload(moved);
      // The objective backward differentiates: with a router, its auxiliary loss too.
      model_begin_passes(model, nullptr);
      return model_forward(model, inputs.data(), targets.data(), B, T, 0.0f) +
             model_routing_stats(model).aux_loss;
    };
    const double numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps);
    model.buf.params.upload(params);
    EXPECT_NEAR(analytic, numeric, 2e-4 + 2e-2 * std::fabs(numeric)) << t.name;
  }
}

TEST(ModelGradients, StandardLayerNormLearnedPositions) { check_gradients(tiny_model({})); }

TEST(ModelGradients, LadderWithInputInjectionAndUntiedHead) {
  check_gradients(tiny_model({"model.residual=LADDER", "model.input_injection=true",
                              "model.loops=3", "model.tie_embeddings=false"}));
}

TEST(ModelGradients, StandardWithInputInjectionNoPrelude) {
  check_gradients(tiny_model({"model.input_injection=true", "model.prelude_layers=0",
                              "model.block_layers=2"}));
}

// The prelude's output is taken at sub-layer 1 (no prelude: the embedding, once h_0 would join
// the stream under the standard residual; with the ladder nothing has joined yet) and the block
// has two layers, so the loop's edges fall inside the ladder's one-sub-layer delay.
TEST(ModelGradients, LadderWithInputInjectionNoPreludeTwoLayerBlock) {
  check_gradients(tiny_model({"model.residual=LADDER", "model.input_injection=true",
                              "model.prelude_layers=0", "model.block_layers=2",
                              "model.coda_layers=0", "model.loops=3"}));
}

TEST(ModelGradients, RmsNormRotary) {
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY"}));
}

// Llama-style blocks: SwiGLU, grouped-query attention (one key/value head for two query heads),
// no linear biases.
TEST(ModelGradients, LlamaBlocks) {
  check_gradients(
      tiny_model({"model.norm=RMSNORM", "model.position=ROTARY", "model.mlp=SWIGLU",
                  "model.n_kv_heads=1", "model.bias=false", "model.tie_embeddings=false"}));
}

// Relaxed recursion: every iteration's LoRA factors (their B perturbed away from zero above, so
// A's gradient is not trivially zero), on Llama blocks and on GPT-2 blocks with the ladder.
TEST(ModelGradients, RelaxedRecursionLlamaBlocks) {
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY", "model.mlp=SWIGLU",
                              "model.n_kv_heads=1", "model.bias=false", "model.loops=3",
                              "model.loop_lora_rank=2"}));
}

TEST(ModelGradients, RelaxedRecursionLadderWithInputInjection) {
  check_gradients(tiny_model({"model.residual=LADDER", "model.input_injection=true",
                              "model.loop_lora_rank=3", "model.block_layers=2"}));
}

// Mixture-of-Recursions: expert choice (iteration 1 keeps 2 of each sequence's 5 tokens, with
// rotary at their own positions) and token choice (each token's depth from the router), with
// their auxiliary losses weighted so the router's gradient shows; the routing itself is fixed
// under the small perturbations.
TEST(ModelGradients, MixtureOfRecursionsExpertChoice) {
  check_gradients(
      tiny_model({"model.norm=RMSNORM", "model.position=ROTARY", "model.mlp=SWIGLU",
                  "model.recursion_router=EXPERT_CHOICE", "model.recursion_aux_weight=0.5"}));
}

// Later iterations attend to the first iteration's keys and values (one key/value head for two
// query heads), whose gradient collects theirs.
TEST(ModelGradients, MixtureOfRecursionsSharedKeysAndValues) {
  check_gradients(
      tiny_model({"model.norm=RMSNORM", "model.position=ROTARY", "model.n_kv_heads=1",
                  "model.loops=3", "model.block_layers=2", "model.recursion_router=EXPERT_CHOICE",
                  "model.recursion_kv=SHARED_FIRST", "model.recursion_aux_weight=0.5"}));
}

TEST(ModelGradients, MixtureOfRecursionsTokenChoice) {
  check_gradients(
      tiny_model({"model.loops=3", "model.coda_layers=0", "model.recursion_router=TOKEN_CHOICE",
                  "model.recursion_gate_scale=0.7", "model.recursion_aux_weight=0.5"}));
}

// The same checks through the emulated device (kernels/emulated/backend.h): asynchronous
// kernels over memory the host reaches only by upload and download.
TEST(ModelGradients, EmulatedDeviceLadderLayerNorm) {
  check_gradients(tiny_model({"model.residual=LADDER", "model.input_injection=true",
                              "model.loops=3", "model.tie_embeddings=false"}),
                  kernels::emulated::make_emulated_backend());
}

TEST(ModelGradients, EmulatedDeviceRmsNormRotary) {
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY"}),
                  kernels::emulated::make_emulated_backend());
}

TEST(ModelGradients, EmulatedDeviceRelaxedLlamaBlocks) {
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY", "model.mlp=SWIGLU",
                              "model.n_kv_heads=1", "model.bias=false", "model.loop_lora_rank=2"}),
                  kernels::emulated::make_emulated_backend());
}

TEST(ModelGradients, EmulatedDeviceMixtureOfRecursions) {
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY",
                              "model.recursion_router=EXPERT_CHOICE",
                              "model.recursion_kv=SHARED_FIRST", "model.recursion_aux_weight=0.5"}),
                  kernels::emulated::make_emulated_backend());
}

#ifdef LOOM_WITH_CUDA
// And on a GPU (runtime.device CUDA, fp32), where there is one.
TEST(ModelGradients, CudaLadderLayerNorm) {
  if (kernels::cuda::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
  check_gradients(tiny_model({"model.residual=LADDER", "model.input_injection=true",
                              "model.loops=3", "model.tie_embeddings=false"}),
                  kernels::cuda::make_cuda_backend(0, false));
}

TEST(ModelGradients, CudaRmsNormRotary) {
  if (kernels::cuda::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
  check_gradients(tiny_model({"model.norm=RMSNORM", "model.position=ROTARY"}),
                  kernels::cuda::make_cuda_backend(0, false));
}
#endif

TEST(ModelLayout, LoopsShareTheBlocksParameters) {
  const Model two = model_create(tiny_model({"model.loops=2"}));
  const Model four = model_create(tiny_model({"model.loops=4"}));
  EXPECT_EQ(two.layout.num_params, four.layout.num_params);
  EXPECT_EQ(four.spec.unrolled.size(), two.spec.unrolled.size() + 2);
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// Two micro-batches of 2 sequences accumulate to the gradient and loss of one micro-batch of 4:
// the loss scaling that data parallelism will build on.
TEST(ModelGradients, AccumulationOverMicroBatchesEqualsOneBatch) {
  kernels::cpu::init_threads(1);
  const config::ModelConfig cfg = tiny_model({"model.residual=LADDER", "model.loops=3"});
  const int T = 5;
  Rng rng{5};
  std::vector<int> inputs(4 * T), targets(4 * T);
  for (int& x : inputs) x = static_cast<int>(rng.below(16));
  for (int& x : targets) x = static_cast<int>(rng.below(16));

  Model whole = model_create(cfg);
  model_init(whole, 9);
  model_plan(whole, 4, T);
  const double loss_whole = model_forward(whole, inputs.data(), targets.data(), 4, T, 1.0f / (4 * T));
  model_backward(whole, 4, T);

  Model parts = model_create(cfg);
  model_init(parts, 9);
  model_plan(parts, 2, T);
  double loss_parts = 0.0;
  for (int micro = 0; micro < 2; ++micro) {
    loss_parts += 0.5 * model_forward(parts, inputs.data() + micro * 2 * T,
                                      targets.data() + micro * 2 * T, 2, T, 1.0f / (4 * T));
    model_backward(parts, 2, T);
  }
  EXPECT_NEAR(loss_parts, loss_whole, 1e-6 * loss_whole);
  double diff = 0.0, norm = 0.0;
  const std::vector<float> g_parts = parts.buf.grads.download(),
                           g_whole = whole.buf.grads.download();
  for (size_t i = 0; i < whole.layout.num_params; ++i) {
    diff += std::pow(static_cast<double>(g_parts[i]) - g_whole[i], 2);
    norm += std::pow(static_cast<double>(g_whole[i]), 2);
  }
  EXPECT_LT(std::sqrt(diff / norm), 1e-5);
}

// Attention keeps only the log-sum-exp per row: doubling T (at most) doubles activation memory
// however many loop iterations there are; (T, T) probabilities per layer would quadruple it.
TEST(ModelLayout, ActivationMemoryIsLinearInSequenceLength) {
  kernels::cpu::init_threads(1);
  config::RunConfig cfg;
  for (const char* o : {"model.d_model=32", "model.n_heads=2", "model.d_mlp=64",
                        "model.max_seq_len=1024", "model.loops=16", "model.vocab_size=64"})
    apply_override(cfg, o);
  auto arena_floats = [&](int T) {
    Model m = model_create(cfg.model());
    model_plan(m, 1, T);
    return static_cast<double>(m.buf.arena.size());
  };
  EXPECT_LT(arena_floats(1024) / arena_floats(512), 2.05);
}

}  // namespace
}  // namespace loom
