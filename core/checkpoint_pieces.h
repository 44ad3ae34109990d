// The pieces of a sharded checkpoint (docs/checkpoint-format.md). A piece is a rectangle of one
// global tensor, seen as (rows, cols) with cols its last dimension (a 1-D tensor is one row),
// stored row-major; in a rank's buffers it is contiguous. A rule decides which rank writes which
// piece (checkpoint_pieces_written); reading assembles whatever a rank's layout needs from
// whatever pieces a checkpoint holds, reading only the byte ranges that overlap it.
//
//   const loom::CheckpointPieces mine = loom::checkpoint_pieces_written(model, opt, first_replica);
//   Meta part = loom::checkpoint_pieces_write(dir, "rank_00003.bin", model.tensors, params, m, v,
//                                             mine);
//   loom::checkpoint_pieces_read(dir, meta, model, &opt);   // this rank's parameters and moments
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"
#include "loom.pb.h"

namespace loom {

struct PieceRect {
  int64_t row = 0, rows = 0, col = 0, cols = 0;
  int64_t size() const { return rows * cols; }
};

struct Piece {
  size_t tensor = 0;  // index into model.tensors
  size_t at = 0;      // its first float in the buffer it is written from or read into
  PieceRect rect;
};

// What one rank writes: `params` from the parameter buffer, `moments` from the optimizer's
// compact m and v (same pieces, one file region each).
struct CheckpointPieces {
  std::vector<Piece> params, moments;
};

// The rule: a tensor held by several pipeline stages is written by the lowest; a tensor
// replicated over tp by tp rank 0 (sharded ones by every tp rank, its shard without the padding);
// parameters and whole (not ZeRO-sharded) moments by the replica with dp = sp = 0
// (`first_replica`); ZeRO-1 moment shards by every rank, its own. Every global element is
// written exactly once.
CheckpointPieces checkpoint_pieces_written(const Model& model, const Optimizer& optimizer,
                                           bool first_replica);

// The pieces of the model's tensors that buffer `ranges` (flat positions as in model.params, in
// order) hold; with `compact` their `at` counts positions within the ranges laid end to end (the
// optimizer's layout), else flat positions.
std::vector<Piece> checkpoint_pieces_in(const Model& model, const std::vector<ShardRange>& ranges,
                                        bool compact);

// Writes the pieces to `dir/file` (params, then m, then v; synced; no file when there are none)
// and returns a CheckpointMeta holding only their entries (params, adam_m, adam_v). `tensors`:
// the model's (model.tensors), which the pieces index.
config::CheckpointMeta checkpoint_pieces_write(const std::string& dir, const std::string& file,
                                               const std::vector<ParamTensor>& tensors,
                                               const float* params, const float* m, const float* v,
                                               const CheckpointPieces& pieces);

// What no checkpoint may hold among what `pieces` write from params, m and v: the first
// non-finite value (or negative adam_v), as `adam_m of tensor "wte" holds nan at row 3, column 7`;
// "" when there is none.
std::string checkpoint_pieces_bad_value(const std::vector<ParamTensor>& tensors,
                                        const float* params, const float* m, const float* v,
                                        const CheckpointPieces& pieces);

// Bytes read by checkpoint_pieces_read, and the bytes of pieces the checkpoint holds.
struct PiecesReadStats {
  int64_t bytes_read = 0, bytes_stored = 0;
};

// model.params (and, with an optimizer, its owned ranges of the moments) ← the checkpoint's
// pieces, reading only the blocks that overlap what this rank holds. Checks names, shapes, that
// each tensor's pieces cover every element exactly once, the CRC-32 of every block read and that
// every value read is finite (adam_v: not negative); padding becomes 0.
PiecesReadStats checkpoint_pieces_read(const std::string& dir, const config::CheckpointMeta& meta,
                                       Model& model, Optimizer* optimizer);

}  // namespace loom
