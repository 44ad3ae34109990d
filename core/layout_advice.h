// Values that work, for a config whose parallel layout does not divide the model or the batch:
// what a refusal adds after saying which rule is broken ("parallel.tp (5) must divide
// model.n_heads (12)…; try parallel.tp 1, 2, 3, 4, 6 or 12 …"). Each function looks at one rule
// and returns "" when it holds or when a number it needs is not positive (validation says so
// first); otherwise "try …" with the values nearest the config's own, each checked against the
// other rules of the same fields (a batch suggestion also fills the pipeline).
//
//   if (cfg.model().n_heads() % cfg.parallel().tp() != 0)
//     throw loom::Error("parallel.tp must divide model.n_heads; " + loom::layout_advice_tp(cfg));
#pragma once
#include <string>

#include "loom.pb.h"

namespace loom {

// parallel.tp dividing model.n_heads and model.d_mlp.
std::string layout_advice_tp(const config::RunConfig& cfg);

// train.global_batch a multiple of train.micro_batch × parallel.dp, with at least parallel.pp
// micro-batches per step (a multiple of pp under INTERLEAVED_1F1B): train.global_batch,
// train.micro_batch or parallel.dp values that satisfy both.
std::string layout_advice_batch(const config::RunConfig& cfg);

// train.seq_len divisible by 2 × parallel.sp (zigzag) or parallel.sp (contiguous).
std::string layout_advice_seq_len(const config::RunConfig& cfg);

// parallel.pp × parallel.virtual_stages pieces at most the unrolled layers (prelude_layers +
// block_layers × loops + coda_layers).
std::string layout_advice_pieces(const config::RunConfig& cfg);

}  // namespace loom
