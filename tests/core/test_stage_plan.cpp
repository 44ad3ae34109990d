// The stage planner (balanced and explicit cuts, layers in words, who holds what) and the model's
// chunk interface: a model cut into pipeline pieces, run piece by piece in one process with the
// boundary states copied between them, gives the whole model's loss and gradients.
#include <gtest/gtest.h>

#include <cstring>

#include "core/config.h"
#include "base/error.h"
#include "core/model.h"
#include "base/rng.h"
#include "core/stage_plan.h"

namespace loom {
namespace {

config::RunConfig run_config(const std::vector<std::string>& sets) {
  config::RunConfig cfg;
  for (const char* s : {"model.vocab_size=261", "model.d_model=16", "model.n_heads=2",
                        "model.d_mlp=32", "model.max_seq_len=8", "train.seq_len=8",
                        "train.micro_batch=2", "train.global_batch=8"})
    apply_override(cfg, s);
  for (const std::string& s : sets) apply_override(cfg, s);
  validate_config(cfg);
  return cfg;
}

TEST(StagePlan, BalancedByCostWithTheHeadOnTheLastPiece) {
  // 12 equal layers in 4 pieces: 3 each when the head is cheap.
  config::RunConfig cfg = run_config({"model.prelude_layers=0", "model.block_layers=12",
                                      "model.loops=1", "model.coda_layers=0", "parallel.pp=4",
                                      "model.vocab_size=16", "logging.sample_tokens=0"});
  EXPECT_EQ(stage_plan_create(cfg).bounds, (std::vector<int>{0, 3, 6, 9, 12}));
  // A vocabulary as costly as several layers moves layers off the last piece.
  apply_override(cfg, "model.vocab_size=4000");
  const StagePlan plan = stage_plan_create(cfg);
  const std::vector<double> costs = stage_plan_costs(cfg, plan);
  EXPECT_LT(plan.bounds[4] - plan.bounds[3], 3);
  const double largest = *std::max_element(costs.begin(), costs.end());
  for (double c : costs) EXPECT_GT(c, 0.0);
  // No other contiguous cut has a smaller largest piece.
  for (int a = 1; a < 12; ++a)
    for (int b = a + 1; b < 12; ++b)
      for (int c = b + 1; c < 12; ++c) {
        const StagePlan other{4, 1, {0, a, b, c, 12}};
        const std::vector<double> k = stage_plan_costs(cfg, other);
        EXPECT_GE(*std::max_element(k.begin(), k.end()), largest * (1 - 1e-12));
      }
}

// The (largest, sum of squares) cost of the best cut of `n` layers into `pieces`, by trying every
// cut: what the planner's shortcut must match.
std::pair<double, double> best_by_search(const config::RunConfig& cfg, int n, int pieces) {
  std::pair<double, double> best{1e300, 0};
  StagePlan plan{pieces, 1, std::vector<int>(pieces + 1, 0)};
  plan.bounds[pieces] = n;
  auto visit = [&](auto& self, int k) -> void {
    if (k == pieces) {
      double largest = 0, squares = 0;
      for (double c : stage_plan_costs(cfg, plan)) largest = std::max(largest, c), squares += c * c;
      if (largest < best.first * (1 - 1e-12) ||
          (largest <= best.first * (1 + 1e-12) && squares < best.second))
        best = {largest, squares};
      return;
    }
    for (int b = plan.bounds[k - 1] + 1; b <= n - (pieces - k); ++b) {
      plan.bounds[k] = b;
      self(self, k + 1);
    }
  };
  visit(visit, 1);
  return best;
}

TEST(StagePlan, BalancedCutMatchesAnExhaustiveSearch) {
  for (const char* vocab : {"model.vocab_size=16", "model.vocab_size=700", "model.vocab_size=9000"})
    for (int layers : {4, 7, 11, 14})
      for (int pp : {2, 3, 4}) {
        if (pp > layers) continue;
        config::RunConfig cfg = run_config(
            {vocab, "model.prelude_layers=0", "model.block_layers=" + std::to_string(layers),
             "model.loops=1", "model.coda_layers=0", "parallel.pp=" + std::to_string(pp),
             "logging.sample_tokens=0"});
        const StagePlan plan = stage_plan_create(cfg);
        double largest = 0, squares = 0;
        for (double c : stage_plan_costs(cfg, plan)) largest = std::max(largest, c), squares += c * c;
        const auto [want_largest, want_squares] = best_by_search(cfg, layers, pp);
        SCOPED_TRACE(std::string(vocab) + " layers " + std::to_string(layers) + " pp " +
                     std::to_string(pp));
        EXPECT_NEAR(largest, want_largest, want_largest * 1e-12);
        EXPECT_NEAR(squares, want_squares, want_squares * 1e-9);
      }
}

TEST(StagePlan, PlansAMillionUnrolledLayers) {
  // The fuzzer's find: a dynamic programme over (pieces, layers²) did not finish at this size.
  const config::RunConfig cfg =
      run_config({"model.loops=524288", "parallel.pp=4", "logging.sample_tokens=0"});
  const StagePlan plan = stage_plan_create(cfg);
  ASSERT_EQ(plan.bounds.size(), 5u);
  for (int g = 0; g < 4; ++g) {
    EXPECT_GT(plan.bounds[g + 1] - plan.bounds[g], 262140);
    EXPECT_LT(plan.bounds[g + 1] - plan.bounds[g], 262148);
  }
}

TEST(StagePlan, ExplicitLayoutAndInterleavedPieces) {
  const config::RunConfig cfg = run_config(
      {"parallel.pp=2", "parallel.pipeline_schedule=INTERLEAVED_1F1B", "parallel.virtual_stages=2",
       "parallel.pipeline_layout=3,2,3,2"});
  const StagePlan plan = stage_plan_create(cfg);
  EXPECT_EQ(plan.bounds, (std::vector<int>{0, 3, 5, 8, 10}));
  EXPECT_EQ(stage_plan_pieces(plan, 0), (std::vector<int>{0, 2}));
  EXPECT_EQ(stage_plan_pieces(plan, 1), (std::vector<int>{1, 3}));
}

// ZB-V: rank r runs pieces r and 2·pp − 1 − r, and the cut balances the ranks' loads (two
// pieces each), not the pieces': no rank carries more than one layer beyond the lightest.
TEST(StagePlan, VShapeBalancesTheRanksLoads) {
  for (int pp : {2, 3, 4}) {
    const config::RunConfig cfg =
        run_config({"parallel.pp=" + std::to_string(pp), "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                    "parallel.virtual_stages=2", "model.prelude_layers=1", "model.block_layers=2",
                    "model.loops=8", "model.coda_layers=1", "train.micro_batch=1"});  // 18 layers
    const StagePlan plan = stage_plan_create(cfg);
    ASSERT_TRUE(plan.v_shape);
    ASSERT_EQ(plan.pieces(), 2 * pp);
    const std::vector<double> costs = stage_plan_costs(cfg, plan);
    std::vector<double> loads;
    for (int r = 0; r < pp; ++r) {
      EXPECT_EQ(stage_plan_pieces(plan, r), (std::vector<int>{r, 2 * pp - 1 - r}));
      double load = 0;
      for (int g : stage_plan_pieces(plan, r)) {
        EXPECT_EQ(stage_plan_rank_of(plan, g), r);
        EXPECT_GE(plan.bounds[g + 1] - plan.bounds[g], 1);
        load += costs[g];
      }
      loads.push_back(load);
    }
    const double layer = 3.0 * layer_forward_flops(cfg.model(), cfg.train().seq_len());
    const auto [lightest, heaviest] = std::minmax_element(loads.begin(), loads.end());
    EXPECT_LE(*heaviest - *lightest, layer * 1.0001) << "pp " << pp;
  }
}

TEST(StagePlan, DescribesLayersInWords) {
  const config::ModelConfig m = run_config({"model.loops=6"}).model();  // 1 + 2 × 6 + 1
  EXPECT_EQ(stage_plan_describe(m, 0, 14),
            "prelude.0, block.0–1 × iterations 0–5, coda.0");
  EXPECT_EQ(stage_plan_describe(m, 2, 8), "block.1 of iteration 0, block.0–1 × iterations 1–2, "
                                          "block.0 of iteration 3");
  EXPECT_EQ(stage_plan_describe(m, 3, 5), "block.0–1 of iteration 1");
  EXPECT_EQ(stage_plan_describe(m, 12, 14), "block.1 of iteration 5, coda.0");
  const config::ModelConfig plain =
      run_config({"model.prelude_layers=0", "model.block_layers=6", "model.loops=1",
                  "model.coda_layers=0"}).model();
  EXPECT_EQ(stage_plan_describe(plain, 2, 4), "layers.2–3");
}

TEST(StagePlan, EachStageHoldsTheSharedBlockOnce) {
  const config::RunConfig cfg = run_config({"parallel.pp=2", "parallel.pipeline_layout=4,6"});
  const StagePlan plan = stage_plan_create(cfg);
  const Model whole = model_layout(cfg.model());
  const Model first = model_layout(cfg.model(), nullptr, {}, {plan, 0});
  const Model second = model_layout(cfg.model(), nullptr, {}, {plan, 1});
  // Stage 0: embeddings, prelude, the block; stage 1: the block, coda, final norm (and the tied
  // embedding as its LM head).
  size_t block = 0;
  for (const ParamTensor& t : whole.layout.tensors)
    if (t.role == ParamRole::kLayer && t.layer == 1) block += t.size;
  EXPECT_GT(block, 0u);
  EXPECT_EQ(first.par.first_use[1], 1);
  EXPECT_EQ(second.par.first_use[1], 5);  // iteration 2 of the block
  EXPECT_EQ(first.par.first_use[3], -1);  // the coda is not on stage 0
  for (const Model* m : {&first, &second})
    for (const ParamTensor& t : m->layout.tensors) {
      const bool replicated = t.role == ParamRole::kTokenEmbedding ||
                              (t.role == ParamRole::kLayer && (t.layer == 1 || t.layer == 2));
      if (replicated) {
        EXPECT_EQ(t.pp_holders, (std::vector<int>{0, 1})) << t.name;
      }
    }
  EXPECT_EQ(
      first.layout.num_params + second.layout.num_params,
      whole.layout.num_params + block * 2 / 2 + whole.layout.tensors[0].size +
          [&] {  // the block's second layer, also held twice
            size_t n = 0;
            for (const ParamTensor& t : whole.layout.tensors)
              if (t.role == ParamRole::kLayer && t.layer == 2) n += t.size;
            return n;
          }());
}

// Runs `cfg` cut into its pipeline pieces, piece by piece in one process, and compares the loss
// and every gradient with the whole model's. With split, each piece's backward runs as an input
// pass (in piece order, reversed) and, after all of them, a weight pass (zero-bubble schedules).
void expect_pieces_equal_whole(const config::RunConfig& cfg, bool split = false,
                               Recompute recompute = Recompute::kNone) {
  const int B = 2, T = cfg.train().seq_len();
  Rng rng{7};
  std::vector<int> inputs(B * T), targets(B * T);
  for (int& x : inputs) x = static_cast<int>(rng.below(cfg.model().vocab_size()));
  for (int& x : targets) x = static_cast<int>(rng.below(cfg.model().vocab_size()));
  const float scale = 1.0f / (B * T);

  Model whole = model_create(cfg.model());
  model_init(whole, 11);
  model_plan(whole, B, T);
  const double loss = model_forward(whole, inputs.data(), targets.data(), B, T, scale);
  model_backward(whole, B, T);

  const StagePlan plan = stage_plan_create(cfg);
  std::vector<Model> stages;
  for (int r = 0; r < plan.pp; ++r) {
    stages.push_back(model_create(cfg.model(), nullptr, {}, {plan, r}));
    model_init(stages.back(), 11);
    model_plan(stages.back(), B, T, plan.virtual_stages, 1, split, recompute);
  }
  // Forward in piece order, handing each boundary state on; then backward in reverse.
  auto run = [&](int piece) -> std::pair<Model&, int> {
    return {stages[piece % plan.pp], piece / plan.pp};
  };
  std::vector<float> boundary;
  double piece_loss = 0;
  for (int g = 0; g < plan.pieces(); ++g) {
    auto [m, c] = run(g);
    if (g > 0) std::memcpy(model_boundary(m, 0, B, T), boundary.data(), boundary.size() * 4);
    piece_loss = model_forward_chunk(m, c, c, 0, inputs.data(), targets.data(), B, T, scale);
    boundary.assign(model_boundary(m, 0, B, T),
                    model_boundary(m, 0, B, T) + model_boundary_count(m, c, true, B, T));
  }
  EXPECT_EQ(piece_loss, loss);
  for (int g = plan.pieces() - 1; g >= 0; --g) {
    auto [m, c] = run(g);
    if (g + 1 < plan.pieces()) std::memcpy(model_boundary(m, 0, B, T), boundary.data(), boundary.size() * 4);
    model_backward_chunk(m, c, c, 0, B, T, {},
                         split ? BackwardPart::kInput : BackwardPart::kAll);
    boundary.assign(model_boundary(m, 0, B, T),
                    model_boundary(m, 0, B, T) + model_boundary_count(m, c, false, B, T));
  }
  if (split)
    for (int g = 0; g < plan.pieces(); ++g) {
      auto [m, c] = run(g);
      model_backward_chunk(m, c, c, 0, B, T, {}, BackwardPart::kWeight);
    }
  // Replicas' gradients summed over the stages holding them equal the whole model's.
  const std::vector<float> whole_grads = whole.buf.grads.download();
  std::vector<std::vector<float>> stage_grads;
  for (const Model& m : stages) stage_grads.push_back(m.buf.grads.download());
  for (const ParamTensor& t : whole.layout.tensors) {
    std::vector<double> sum(t.size, 0.0);
    int held = 0;
    for (size_t k = 0; k < stages.size(); ++k)
      for (const ParamTensor& s : stages[k].layout.tensors)
        if (s.global_index == t.global_index) {
          ++held;
          for (size_t i = 0; i < t.size; ++i) sum[i] += stage_grads[k][s.offset + i];
        }
    ASSERT_GE(held, 1) << t.name;
    for (size_t i = 0; i < t.size; ++i) {
      const double want = whole_grads[t.offset + i];
      if (held == 1)
        ASSERT_EQ(sum[i], want) << t.name << "[" << i << "]";  // the same operations
      else
        ASSERT_NEAR(sum[i], want, 1e-6 * (1.0 + std::abs(want))) << t.name << "[" << i << "]";
    }
  }
}

TEST(StagePlan, PiecesGiveTheWholeModelsLossAndGradients) {
  expect_pieces_equal_whole(run_config({"parallel.pp=3", "model.prelude_layers=0",
                                        "model.block_layers=4", "model.loops=1",
                                        "model.coda_layers=0", "model.tie_embeddings=false",
                                        "parallel.pipeline_layout=1,2,1"}));
  // Looped, input injection, boundaries inside loop iterations.
  expect_pieces_equal_whole(run_config({"parallel.pp=2", "model.input_injection=true",
                                        "parallel.pipeline_layout=4,6"}));
  // Ladder with injection; the first boundary falls right after the injection point (inside
  // the ladder's delay) and pieces interleave over two ranks.
  expect_pieces_equal_whole(run_config(
      {"parallel.pp=2", "model.input_injection=true", "model.residual=LADDER",
       "parallel.pipeline_schedule=INTERLEAVED_1F1B", "parallel.virtual_stages=2",
       "parallel.pipeline_layout=2,3,2,3", "model.norm=RMSNORM", "model.position=ROTARY"}));
  expect_pieces_equal_whole(run_config({"parallel.pp=2", "model.residual=LADDER",
                                        "parallel.pipeline_layout=1,9"}));
}

TEST(StagePlan, SplitBackwardGivesTheSameGradients) {
  expect_pieces_equal_whole(run_config({"parallel.pp=2", "model.input_injection=true",
                                        "parallel.pipeline_layout=4,6",
                                        "parallel.pipeline_schedule=ZERO_BUBBLE_H1"}),
                            true);
  expect_pieces_equal_whole(
      run_config({"parallel.pp=3", "model.residual=LADDER", "model.tie_embeddings=false",
                  "parallel.pipeline_layout=3,3,4", "parallel.pipeline_schedule=ZERO_BUBBLE_H1",
                  "model.norm=RMSNORM", "model.position=ROTARY"}),
      true);
  // With recomputation the weight pass runs each recomputed unit's forward again for the
  // activations its gradients need: bitwise the same gradients (kSqrt: several units a segment).
  for (Recompute recompute : {Recompute::kLoopBoundary, Recompute::kSqrt}) {
    expect_pieces_equal_whole(
        run_config({"parallel.pp=2", "model.input_injection=true", "model.loops=6",
                    "parallel.pipeline_layout=6,8", "parallel.pipeline_schedule=ZERO_BUBBLE_H1"}),
        true, recompute);
    expect_pieces_equal_whole(
        run_config({"parallel.pp=2", "model.residual=LADDER", "model.tie_embeddings=false",
                    "parallel.pipeline_layout=4,6", "parallel.pipeline_schedule=ZERO_BUBBLE_H1",
                    "model.norm=RMSNORM", "model.position=ROTARY"}),
        true, recompute);
  }
}

}  // namespace
}  // namespace loom
