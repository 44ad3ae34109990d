// Checkpoints: a folder `step_NNNNNNN/` per save holding checkpoint.textproto (CheckpointMeta in
// configs/loom.proto: step, data position, RNG state, resolved config, and for every tensor its
// global shape, this piece's offsets, file, byte offset and CRC-32) plus params.bin, adam_m.bin
// and adam_v.bin (fp32). The folder is written under a temporary name, synced to the device and
// renamed, so a folder named step_* is always complete. Format: docs/checkpoint-format.md.
//
//   loom::checkpoint_save(dir, state, model, opt, keep_last);
//   std::string newest = loom::checkpoint_latest(dir);   // "" when none
//   loom::CheckpointState s = loom::checkpoint_load(newest, model, &opt);
#pragma once
#include <cstdint>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "core/model.h"
#include "core/optimizer.h"
#include "loom.pb.h"

namespace loom {

struct CheckpointState {
  config::RunConfig config;
  long step = 0;               // optimizer steps completed
  int64_t data_position = 0;   // training sequences consumed
  uint64_t rng_state = 0;
  int64_t tokens_seen = 0;
};

// Writes `checkpoints_dir/step_NNNNNNN` and then deletes all but the newest keep_last (0 = keep
// all). Returns the folder written.
std::string checkpoint_save(const std::string& checkpoints_dir, const CheckpointState& state,
                            const Model& model, const Optimizer& optimizer, int keep_last);

// Writes checkpoints one at a time, either at once or (checkpoint.async) on a thread of its own
// while training goes on. A write first waits for the previous one; an error of a background write
// is thrown by the next write or wait. The folder appears only complete (checkpoint_save), so a
// process that dies mid-write leaves the previous checkpoint as the newest.
class CheckpointWriter {
 public:
  explicit CheckpointWriter(bool background = false) : background_(background) {}
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  ~CheckpointWriter();  // waits for a write in progress (its error is printed, not thrown)

  // `model` has the whole model's layout (every global tensor) and parameters, `optimizer` the
  // whole moments. A background write copies them first (the only copy); a direct one writes
  // from them.
  void write(const std::string& checkpoints_dir, const CheckpointState& state, const Model& model,
             const Optimizer& optimizer, int keep_last);
  void wait();

 private:
  bool background_;
  std::thread thread_;
  std::exception_ptr error_;
};

// Complete checkpoint folders in checkpoints_dir, oldest first.
std::vector<std::string> checkpoint_list(const std::string& checkpoints_dir);

// The newest complete checkpoint folder in checkpoints_dir, or "" when there is none.
std::string checkpoint_latest(const std::string& checkpoints_dir);

// Reads only the metadata (config included); throws loom::Error when it is missing or corrupt.
CheckpointState checkpoint_read_state(const std::string& checkpoint_dir);

// Loads parameters (and, when optimizer is non-null, the Adam moments and step; the optimizer
// must own the whole buffer) into a model created from the checkpoint's model config: under
// tensor parallelism this rank's shards of the saved global tensors, so a checkpoint resumes at
// any tp. Verifies names, global shapes and checksums.
CheckpointState checkpoint_load(const std::string& checkpoint_dir, Model& model,
                                Optimizer* optimizer);

}  // namespace loom
