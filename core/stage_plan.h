// The pipeline stage planner: how the unrolled layer list (prelude layers, every iteration of the
// shared block, coda layers) is cut into pp · virtual_stages contiguous pieces, which pieces each
// pipeline rank runs, and which ranks hold each unique layer. `loom plan` and `loom train` both
// call it (docs/architecture.md, "Pipeline parallelism").
//
// Piece g (the global pipeline stage) runs unrolled positions [bounds[g], bounds[g + 1]); rank r
// runs pieces r, r + pp, r + 2·pp, ... (its chunks 0, 1, ...), as Megatron interleaves them, or
// with ZERO_BUBBLE_V pieces r and 2·pp − 1 − r (a V). A piece boundary may fall anywhere, inside
// a loop iteration too.
//
//   loom::StagePlan plan = loom::stage_plan_create(cfg);   // balanced by cost, or
//   parallel.pipeline_layout for (int g : loom::stage_plan_pieces(plan, rank)) run(plan.bounds[g],
//   plan.bounds[g + 1]);
#pragma once
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

struct StagePlan {
  int pp = 1, virtual_stages = 1;
  std::vector<int> bounds;  // pp · virtual_stages + 1 unrolled positions, from 0 to the count
  bool v_shape = false;     // ZERO_BUBBLE_V's placement (virtual_stages 2)
  int pieces() const { return pp * virtual_stages; }
  int positions() const { return bounds.empty() ? 0 : bounds.back(); }
};

// The unrolled layer count: prelude + block × loops + coda.
int unrolled_layers(const config::ModelConfig& model);
// Forward FLOPs per token of one unrolled layer at sequence length T: its matmuls (q, k, v, the
// projections, the MLP) and causal attention (scores and weighted values over (T + 1) / 2 keys
// on average). A training step is 3× forward.
double layer_forward_flops(const config::ModelConfig& model, int T);
// The same with attention over all T keys (Megatron's convention for model FLOPs, which MFU
// counts: docs/architecture.md, "Utilisation"); and the matmuls' part alone.
double layer_model_flops(const config::ModelConfig& model, int T);
double layer_matmul_flops(const config::ModelConfig& model);

// One piece covering the whole model (no pipeline).
StagePlan stage_plan_single(const config::ModelConfig& model);

// The plan of cfg.parallel: parallel.pipeline_layout when set (throws loom::Error naming it when
// its numbers do not fit), else balanced by cost (the largest piece as small as possible, then
// the pieces' costs as even as possible; in a V the ranks' loads, each rank holding two pieces).
// Throws when there are more pieces than layers.
StagePlan stage_plan_create(const config::RunConfig& cfg);

// Cost (FLOPs per token of forward + backward) of each piece: its layers, the embedding on the
// first piece, the LM head and cross-entropy on the last.
std::vector<double> stage_plan_costs(const config::RunConfig& cfg, const StagePlan& plan);

// The pieces (global stages) pipeline rank `rank` runs, in chunk order.
std::vector<int> stage_plan_pieces(const StagePlan& plan, int rank);
// The pipeline rank that runs piece `piece`.
int stage_plan_rank_of(const StagePlan& plan, int piece);

// Whether rank `rank` runs unique layer `layer` (0 .. prelude + block + coda − 1) anywhere.
bool stage_plan_runs_layer(const config::ModelConfig& model, const StagePlan& plan, int rank,
                           int layer);

// Positions [begin, end) in words: "prelude.0, block.0–1 × iterations 0–2, block.0 of
// iteration 3".
std::string stage_plan_describe(const config::ModelConfig& model, int begin, int end);

}  // namespace loom
