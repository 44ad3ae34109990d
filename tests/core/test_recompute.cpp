// Recomputation (train.recompute), truncated backprop (model.backprop_loops) and loop counts that
// change from step to step: gradients bitwise equal to keeping every activation, across chunk
// edges too, and arenas of the size each policy promises.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/config.h"
#include "core/loop_sampling.h"
#include "core/model.h"
#include "base/rng.h"
#include "kernels/cpu/threads.h"

namespace loom {
namespace {

config::ModelConfig looped_model(const std::vector<std::string>& overrides) {
  config::RunConfig cfg;
  for (const char* o :
       {"model.vocab_size=16", "model.d_model=8", "model.n_heads=2", "model.d_mlp=16",
        "model.max_seq_len=6", "model.prelude_layers=1", "model.block_layers=2",
        "model.loops=7", "model.coda_layers=1", "model.init_std=0.3",
        "model.input_injection=true"})
    apply_override(cfg, o);
  for (const std::string& o : overrides) apply_override(cfg, o);
  return cfg.model();
}

struct Result {
  double loss = 0;
  std::vector<float> grads;
  std::vector<std::pair<size_t, size_t>> reported;  // ranges backward called final, in order
};

// One forward and backward of a fixed batch. `bounds` cut the unrolled list into chunks this one
// rank runs in turn (as virtual pipeline stages on one rank would), passing the boundary state in
// one buffer; empty: one chunk.
Result run(const config::ModelConfig& cfg, Recompute policy, std::vector<int> bounds = {},
           int loops = 0, int plan_min = 0, int plan_max = 0) {
  kernels::cpu::init_threads(1);
  const int B = 2, T = 5;
  PipelineStage stage;
  if (!bounds.empty())
    stage.plan = {1, static_cast<int>(bounds.size()) - 1, bounds};
  Model model = model_create(cfg, nullptr, {}, stage);
  // Weights that do not depend on the loop count (model_init scales by the depth).
  Rng rng{11};
  std::vector<float> params(model.layout.num_params);
  for (const ParamTensor& t : model.layout.tensors)
    for (size_t i = 0; i < t.size; ++i)
      params[t.offset + i] = static_cast<float>(
          (t.init == ParamInit::kOnes ? 1.0 : 0.0) + (t.init == ParamInit::kOnes ? 0.1 : 0.3) * rng.normal());
  model.buf.params.upload(params);
  if (plan_max > 0) model_set_loop_range(model, plan_min, plan_max);
  const int chunks = static_cast<int>(model.par.chunks.size());
  model_plan(model, B, T, chunks, 1, false, policy);
  if (loops > 0) model_set_loops(model, loops);
  std::vector<int> inputs(B * T), targets(B * T);
  for (int& x : inputs) x = static_cast<int>(rng.below(model.spec.V));
  for (int& x : targets) x = static_cast<int>(rng.below(model.spec.V));
  Result out;
  for (int c = 0; c < chunks; ++c)
    out.loss += model_forward_chunk(model, c, c, 0, inputs.data(), targets.data(), B, T,
                                    1.0f / (B * T));
  for (int c = chunks - 1; c >= 0; --c)
    model_backward_chunk(model, c, c, 0, B, T,
                         [&](size_t offset, size_t count) { out.reported.emplace_back(offset, count); });
  out.grads = model.buf.grads.download();
  return out;
}

void expect_same(const Result& a, const Result& b, const std::string& what) {
  EXPECT_EQ(a.loss, b.loss) << what;
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * sizeof(float)))
      << what << ": gradients differ";
  EXPECT_EQ(a.reported, b.reported) << what << ": ranges reported in another order";
}

const std::map<std::string, std::vector<std::string>> kVariants = {
    {"standard", {}},
    {"ladder", {"model.residual=LADDER"}},
    {"ladder-rotary-rmsnorm-untied",
     {"model.residual=LADDER", "model.position=ROTARY", "model.norm=RMSNORM",
      "model.tie_embeddings=false"}},
    {"standard-no-prelude", {"model.prelude_layers=0", "model.input_injection=false"}},
};

TEST(Recompute, GradientsBitwiseEqualToKeepingEverything) {
  for (const auto& [name, overrides] : kVariants) {
    const config::ModelConfig cfg = looped_model(overrides);
    const Result none = run(cfg, Recompute::kNone);
    EXPECT_GT(none.loss, 0.0);
    expect_same(none, run(cfg, Recompute::kLoopBoundary), name + " LOOP_BOUNDARY");
    expect_same(none, run(cfg, Recompute::kSqrt), name + " SQRT");
  }
}

TEST(Recompute, ChunkEdgesInsideIterationsAreBoundaries) {
  // 1 + 2 × 7 + 1 = 16 positions, cut mid-iteration (4, 11) and after the first layer (1).
  for (const auto& [name, overrides] : kVariants) {
    const config::ModelConfig cfg = looped_model(overrides);
    const Result whole = run(cfg, Recompute::kNone);
    const int n = static_cast<int>(model_layout(cfg).spec.unrolled.size());
    for (const std::vector<int>& bounds :
         {std::vector<int>{0, 4, 11, n}, std::vector<int>{0, 1, n}}) {
      const Result none = run(cfg, Recompute::kNone, bounds);
      EXPECT_EQ(0, std::memcmp(whole.grads.data(), none.grads.data(),
                               whole.grads.size() * sizeof(float)))
          << name << ": chunks without recomputation";
      expect_same(none, run(cfg, Recompute::kLoopBoundary, bounds), name + " LOOP_BOUNDARY chunks");
      expect_same(none, run(cfg, Recompute::kSqrt, bounds), name + " SQRT chunks");
    }
  }
}

TEST(Recompute, TruncatedBackpropIsTheSameUnderEveryPolicy) {
  for (const auto& [name, overrides] : kVariants) {
    std::vector<std::string> o = overrides;
    o.push_back("model.backprop_loops=3");
    const config::ModelConfig cfg = looped_model(o);
    const Result none = run(cfg, Recompute::kNone);
    expect_same(none, run(cfg, Recompute::kLoopBoundary), name + " truncated LOOP_BOUNDARY");
    expect_same(none, run(cfg, Recompute::kSqrt), name + " truncated SQRT");
    const int n = static_cast<int>(model_layout(cfg).spec.unrolled.size());
    expect_same(none, run(cfg, Recompute::kSqrt, {0, 4, 11, n}), name + " truncated SQRT chunks");
    const Result full = run(looped_model(overrides), Recompute::kNone);
    EXPECT_NE(0, std::memcmp(full.grads.data(), none.grads.data(), full.grads.size() * sizeof(float)))
        << name << ": truncation changed nothing";
    // Backprop through every iteration is no truncation at all.
    std::vector<std::string> all = overrides;
    all.push_back("model.backprop_loops=7");
    expect_same(run(looped_model(overrides), Recompute::kNone),
                run(looped_model(all), Recompute::kLoopBoundary), name + " k = loops");
  }
}

TEST(Recompute, TruncationLeavesTheCutOffPathWithoutGradient) {
  // Without input injection nothing before the cut reaches the loss through a kept iteration:
  // the prelude and the embeddings' look-up get no gradient (a tied embedding still gets the
  // LM head's).
  const config::ModelConfig cfg = looped_model(
      {"model.input_injection=false", "model.backprop_loops=2", "model.tie_embeddings=false",
       "model.position=ROTARY"});
  const Result r = run(cfg, Recompute::kLoopBoundary);
  const Model layout = model_layout(cfg);
  for (const ParamTensor& t : layout.layout.tensors) {
    double sum = 0;
    for (size_t i = 0; i < t.size; ++i) sum += std::fabs(r.grads[t.offset + i]);
    const bool cut_off = t.name == "wte" || t.name.rfind("prelude.", 0) == 0;
    if (cut_off) {
      EXPECT_EQ(sum, 0.0) << t.name;
    } else if (t.name.find("bias") == std::string::npos) {
      EXPECT_GT(sum, 0.0) << t.name;
    }
  }
}

TEST(Recompute, ModelRunsAnyPlannedLoopCount) {
  // Planned for 2..9 iterations and run at 3 (and 9): the same as a model built for that count.
  for (const auto& [name, overrides] : kVariants) {
    for (int loops : {3, 9}) {
      std::vector<std::string> o = overrides;
      o.push_back("model.loops=" + std::to_string(loops));
      const Result built = run(looped_model(o), Recompute::kNone);
      for (Recompute policy : {Recompute::kNone, Recompute::kLoopBoundary, Recompute::kSqrt})
        expect_same(built, run(looped_model(overrides), policy, {}, loops, 2, 9),
                    name + " at " + std::to_string(loops) + " loops");
    }
  }
}

size_t arena_floats(const config::ModelConfig& cfg, Recompute policy, int B, int T) {
  return model_arena_sizes(model_layout(cfg), B, T, 1, 1, false, policy).total;
}

TEST(Recompute, ArenaOfEachPolicy) {
  config::RunConfig base;
  for (const char* o : {"model.prelude_layers=0", "model.coda_layers=0", "model.block_layers=2",
                        "model.input_injection=true"})
    apply_override(base, o);
  auto with_loops = [&](int loops) {
    config::ModelConfig m = base.model();
    m.set_loops(loops);
    return m;
  };
  const int B = 16, T = 128;
  // Keeping every activation grows by a whole iteration per loop; a boundary by far less.
  const size_t none4 = arena_floats(with_loops(4), Recompute::kNone, B, T);
  const size_t none5 = arena_floats(with_loops(5), Recompute::kNone, B, T);
  const size_t lb4 = arena_floats(with_loops(4), Recompute::kLoopBoundary, B, T);
  const size_t lb5 = arena_floats(with_loops(5), Recompute::kLoopBoundary, B, T);
  const size_t NC = static_cast<size_t>(B) * T * base.model().d_model();
  EXPECT_EQ(lb5 - lb4, NC);  // one boundary: the stream (standard residual)
  EXPECT_GT(none5 - none4, 10 * NC);
  // The mission's target: 1000 iterations under SQRT in the memory of 12 unshared layers.
  config::ModelConfig twelve = base.model();
  twelve.set_block_layers(12);
  twelve.set_loops(1);
  twelve.set_input_injection(false);
  const size_t sqrt1000 = arena_floats(with_loops(1000), Recompute::kSqrt, B, T);
  EXPECT_LE(sqrt1000, arena_floats(twelve, Recompute::kNone, B, T));
  EXPECT_LT(sqrt1000, arena_floats(with_loops(1000), Recompute::kLoopBoundary, B, T));
}

TEST(LoopSampling, DrawsAreReproducibleAndInRange) {
  config::RunConfig cfg;
  apply_override(cfg, "model.loops_sampling.kind=UNIFORM");
  apply_override(cfg, "model.loops_sampling.min=2");
  apply_override(cfg, "model.loops_sampling.max=9");
  std::map<int, int> seen;
  for (long step = 0; step < 400; ++step) {
    const int loops = draw_loops(cfg, step);
    EXPECT_EQ(loops, draw_loops(cfg, step));
    ++seen[loops];
  }
  EXPECT_EQ(seen.size(), 8u);
  EXPECT_EQ(seen.begin()->first, 2);
  EXPECT_EQ(seen.rbegin()->first, 9);
  config::RunConfig other = cfg;
  apply_override(other, "train.seed=99");
  int differ = 0;
  for (long step = 0; step < 50; ++step) differ += draw_loops(cfg, step) != draw_loops(other, step);
  EXPECT_GT(differ, 25);

  // Huginn's Poisson–log-normal: mean rate 8 → loop counts of mean ≈ 9, a long right tail.
  config::RunConfig huginn;
  apply_override(huginn, "model.loops_sampling.kind=POISSON_LOGNORMAL");
  apply_override(huginn, "model.loops_sampling.mean=8");
  apply_override(huginn, "model.loops_sampling.max=64");
  double sum = 0;
  int most = 0;
  for (long step = 0; step < 4000; ++step) {
    const int loops = draw_loops(huginn, step);
    ASSERT_GE(loops, 1);
    ASSERT_LE(loops, 64);
    sum += loops;
    most = std::max(most, loops);
  }
  EXPECT_NEAR(sum / 4000, 9.0, 0.4);
  EXPECT_GT(most, 20);
  const LoopCounts range = run_loop_counts(huginn);
  EXPECT_EQ(range.min, 1);
  EXPECT_EQ(range.max, 64);
}

}  // namespace
}  // namespace loom
