// Checkpoints: a folder `step_NNNNNNN/` per save holding checkpoint.textproto (CheckpointMeta in
// configs/loom.proto: step, data position, RNG state, resolved config, and every piece of every
// tensor: its place in the global tensor, file, byte offset and CRC-32) plus one data file per
// rank that holds pieces (rank_RRRRR.bin, fp32). Every rank writes its own pieces at once
// (core/checkpoint_pieces.h says which); rank 0 writes the metadata only once every rank's file
// is synced, then renames the folder, so a folder named step_* is always complete. Resume reads
// on every rank only what overlaps its own shard, at any layout. A checkpoint directory belongs to
// one run (its OWNER file): another run is refused it, and pruning removes only the run's own
// checkpoints. Every field read is checked (numbers against each other and the config, pieces
// covering each tensor exactly once, values finite), and no non-finite value is ever written.
// Format: docs/checkpoint-format.md.
//
//   const std::string token = loom::checkpoint_claim_directory(dir, run_dir);   // rank 0
//   loom::CheckpointWriter writer(world, /*background=*/false, token);
//   writer.write(dir, state, model, opt, first_replica, keep_last);   // collective
//   loom::CheckpointState s = loom::checkpoint_load(loom::checkpoint_latest(dir), model, &opt);
#pragma once
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"
#include "loom.pb.h"
#include "parallel/communicator.h"

namespace loom {

struct CheckpointState {
  config::RunConfig config;
  long step = 0;              // optimizer steps completed
  int64_t data_position = 0;  // training sequences consumed
  uint64_t rng_state = 0;
  int64_t tokens_seen = 0;
  // Set by checkpoint_load: what this rank read, and what the checkpoint's pieces hold.
  int64_t bytes_read = 0, bytes_stored = 0;
};

// Claims checkpoints_dir (created if missing) for the run in run_dir, on its rank 0 with the run
// directory locked, before anything reads or writes checkpoints there; returns the run's token
// (kept in RUN_DIR/run.token, made on the run's first start). A directory without an OWNER file
// (new, or written by a loom that recorded none) becomes this run's; one whose OWNER names another
// run's token is refused (loom::Error naming that run's directory); the run's own is accepted
// from wherever the run directory now lies.
std::string checkpoint_claim_directory(const std::string& checkpoints_dir,
                                       const std::string& run_dir);

// A single process's checkpoint: writes `checkpoints_dir/step_NNNNNNN` and then deletes all but
// the newest keep_last (0 = keep all) of those carrying run_token (a checkpoint of another run is
// never deleted; "" matches checkpoints that carry none). Returns the folder written.
std::string checkpoint_save(const std::string& checkpoints_dir, const CheckpointState& state,
                            const Model& model, const Optimizer& optimizer, int keep_last,
                            const std::string& run_token = "");

// A new run directory (absent or empty, else loom::Error) holding config.textproto (cfg) and
// one checkpoint of model's weights at step 0 with zero Adam moments: a start for loom train
// --init-from, loom sample and loom eval (what loom import and loom convert write). Returns the
// checkpoint's folder.
std::string checkpoint_start_run(const std::string& run_dir, const config::RunConfig& cfg,
                                 const Model& model);

// Writes checkpoints one at a time, on every rank of `world` together, either at once or
// (checkpoint.async) on a thread of each rank's own while training goes on. Every call is
// collective: every rank calls it at the same step. A write first finishes the previous one.
// The folder appears only complete, so a job that dies mid-write leaves the previous checkpoint
// as the newest; an error of a background write is thrown by the poll or wait that commits it.
// run_token (rank 0's matters: it writes the metadata and prunes): the one
// checkpoint_claim_directory returned, recorded in every checkpoint; keep_last removes only
// checkpoints that carry it.
class CheckpointWriter {
 public:
  CheckpointWriter(Communicator* world, bool background, std::string run_token = "");
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  ~CheckpointWriter();  // joins a write in progress without committing it (as a crash would)

  // Starts the checkpoint of `state.step`: this rank's pieces of `model`'s parameters and
  // `optimizer`'s moments (first_replica: this rank has dp = sp = 0). A background write copies
  // them first (this rank's state only); a direct one writes from them and commits before it
  // returns the folder ("" for a background write). When any rank's pieces hold a non-finite
  // value (or a negative adam_v) every rank throws loom::Error naming it, and nothing is written.
  std::string write(const std::string& checkpoints_dir, const CheckpointState& state,
                    const Model& model, const Optimizer& optimizer, bool first_replica,
                    int keep_last);
  // Commits a background write once every rank's pieces are on disk; returns at once otherwise.
  // Costs one small all-reduce while a write is pending. Call it at the same points everywhere.
  void poll();
  // Finishes and commits the pending write, if any; returns its folder ("" when none).
  std::string wait();

 private:
  struct Pending;
  std::string commit();
  Communicator* world_;
  bool background_;
  std::string run_token_;
  std::unique_ptr<Pending> pending_;
};

// Complete checkpoint folders in checkpoints_dir, oldest first (step_N folders whose N exceeds
// 64 bits are none).
std::vector<std::string> checkpoint_list(const std::string& checkpoints_dir);

// The newest complete checkpoint folder in checkpoints_dir, or "" when there is none.
std::string checkpoint_latest(const std::string& checkpoints_dir);

// Reads only the metadata (config included); throws loom::Error naming the file and field when it
// is missing or corrupt: step outside [0, train.steps], optimizer_step outside [0, step],
// data_position other than step × train.global_batch, tokens_seen other than data_position ×
// train.seq_len (of the config it holds), a step other than its folder's name says.
CheckpointState checkpoint_read_state(const std::string& checkpoint_dir);

// Loads parameters (and, when optimizer is non-null, its owned ranges of the Adam moments, and
// its step) into a model created from the checkpoint's model config, at any layout: this rank's
// tensors and shards, read from whichever pieces overlap them. Verifies names, global shapes,
// coverage (every element of every tensor in exactly one piece), the checksums of what it reads,
// and that every value read is finite. Reads checkpoints of any loom version.
CheckpointState checkpoint_load(const std::string& checkpoint_dir, Model& model,
                                Optimizer* optimizer);

}  // namespace loom
