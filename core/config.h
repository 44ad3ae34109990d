// Reading, overriding, validating and writing run configs (configs/loom.proto).
//
// Every error is a loom::Error whose message names where the problem is: `FILE:LINE:COL: ...`
// for the text file, `--set KEY=VALUE: ...` for an override, and the dotted field path for a
// violated invariant.
//
//   loom::config::RunConfig cfg = loom::load_config("configs/default.textproto",
//                                                   {"optim.lr=1e-3", "train.steps=50"});
#pragma once
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

// The most tokens one sample may generate (logging.sample_tokens, loom sample --tokens): each
// token runs the whole model over the whole context, so larger counts run for hours.
constexpr long kMaxSampleTokens = 65536;

// Parses the text-format file, applies each "path.to.field=value" override in order, validates
// the result and returns it resolved (see resolve_defaults), its data paths absolute: a relative
// path written in the file is taken from the file's folder, a default or --set one from the
// working directory.
config::RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides);

// Parses text-format `text`; `source` names it in error messages.
config::RunConfig parse_config_text(const std::string& text, const std::string& source);

// Sets one scalar field from "path.to.field=value" (enums by name, bools true/false); a repeated
// one takes a comma-separated list that replaces its values ("train.eval_loops=1,2,4").
void apply_override(config::RunConfig& cfg, const std::string& assignment);

// Checks every invariant a run relies on; throws loom::Error naming the fields involved.
void validate_config(const config::RunConfig& cfg);

// The config with every unset scalar field set to its schema default, so that what is stored in
// a run directory or checkpoint keeps meaning the same model if a default changes later.
config::RunConfig resolve_defaults(const config::RunConfig& cfg);

// Text format with every field written out, defaults included: what a run actually used.
std::string config_to_text(const config::RunConfig& cfg);

// The model section as one-line JSON with every field written out (proto field names, enums by
// name): what the PyTorch reference and the benchmarks read.
std::string model_config_json(const config::ModelConfig& model);

// Key/value heads of the model: model.n_kv_heads, or n_heads when it is 0.
inline int model_kv_heads(const config::ModelConfig& m) {
  return m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
}

// Mixture-of-Recursions: whether the loop is routed, and how many of a sequence's T tokens
// expert-choice iteration r keeps (⌊recursion_capacity[r] · T⌋, default capacity (R − r)/R).
inline bool model_routed(const config::ModelConfig& m) {
  return m.recursion_router() != config::ModelConfig::NONE;
}
int recursion_keep(const config::ModelConfig& m, int r, int T);

// Optimizer steps' micro-batches on one rank: global_batch / (micro_batch · dp).
int grad_accum_steps(const config::RunConfig& cfg);

// What backward recomputes instead of keeping (train.recompute; core/model.h, ChunkSegment).
// core/parallel_layout.h resolves train.recompute to it.
enum class Recompute { kNone, kLoopBoundary, kSqrt };

}  // namespace loom
