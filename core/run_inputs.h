// What a run reads and checks before anything is allocated: the training and validation data,
// their description (data.textproto) and tokenizer, the memory the layout needs, and the run
// directory, created and locked by rank 0; collective over the run's groups. train()'s first
// phase (core/trainer.cpp).
//
//   loom::RunInputs in = loom::open_run(cfg, options, groups, *backend);   // throws loom::Error
//   loom::DataLoader loader{&in.train_data, seed, shuffle};
#pragma once
#include <filesystem>
#include <optional>
#include <string>

#include "core/data.h"
#include "core/run_dir.h"
#include "core/tokenizer.h"
#include "core/trainer.h"
#include "kernels/backend.h"
#include "loom.pb.h"
#include "parallel/groups.h"

namespace loom {

// The run directory is locked while this lives (the kernel releases the lock if the process
// dies); data_dir and val_dir are where the shards' data.textproto lies.
struct RunInputs {
  std::string data_dir, val_dir;
  std::optional<config::DataInfo> data_info, val_info;
  std::optional<Tokenizer> tokenizer;
  TokenDataset train_data, val_data;
  bool validate = false;
  std::filesystem::path run_dir, checkpoints_dir;
  std::string run_token;  // rank 0: checkpoint_claim_directory's ("" on other ranks)
  RunDirLock lock;  // the kernel releases it if the process dies
};

// Memory, then data, first: a run that cannot start leaves no run directory behind, and a layout
// this machine (or the rank's GPU, on a device backend) cannot hold is refused before anything
// is allocated.
RunInputs open_run(const config::RunConfig& cfg, const TrainOptions& options, ProcessGroups& groups,
                   const kernels::KernelBackend& backend);

// What loom train's launcher checks before it starts any rank, so that a mistake is one clean
// message and no rank is started (each rank checks again, authoritatively): the run directory
// against --resume, a resumed run's own config.textproto against this config (the model and the
// data stream), and that the shards and their description can be found.
void check_before_start(const config::RunConfig& cfg, const std::string& run_dir, bool resume);

}  // namespace loom
