// What one rank trains with (`Run`, built once by train(), core/trainer.cpp), and what the run
// says of itself from it: the layout lines at start and the closing sample. Internal to
// core/trainer.cpp and core/run_report.cpp.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/parallel_layout.h"
#include "core/pipeline.h"
#include "core/run_dir.h"
#include "core/run_groups.h"
#include "core/tokenizer.h"
#include "core/trace.h"
#include "kernels/device_array.h"
#include "loom.pb.h"
#include "parallel/grad_reducer.h"
#include "parallel/grad_windows.h"
#include "parallel/groups.h"

namespace loom {

// Everything one rank trains with, built once by train().
struct Run {
  const config::RunConfig& cfg;
  const ParallelLayout& layout;
  ProcessGroups& groups;
  Model model;
  Pipeline pipe;
  GradReducer reducer;
  bool zero = false;
  Optimizer optimizer;
  std::vector<ReplicaGroup> replica_groups;
  ReplicaSync replicas;
  TraceRecorder trace;
  CheckpointWriter
      checkpoints;  // every rank writes its pieces (checkpoint.async: in the background)
  // ZeRO-1 and 2: this rank's shard of the averaged gradients (the reducer's or the windows')
  kernels::DeviceArray<float> grad_shard;
  // parallel.grad_reduce_dtype BF16: the gradients and the ZeRO shard as they travel (bf16)
  kernels::DeviceArray<unsigned char> grad_wire, grad_wire_shard;
  Traffic* traffic = nullptr;  // not owned
  // ZeRO-2: the gradients' windows (the model's grads point into them) and their storage
  GradWindows windows = {};
  kernels::DeviceArray<float> grad_storage = {}, grad_received = {};
};

// The lines train.log starts with: the model, the threads, deep-loop options, and with several
// ranks the mesh, its nodes, the pipeline and every stage's layers, the sequence cut and the
// gradient buckets.
void log_layout(RunLog& log, const Run& run, int threads, size_t global_params);

// Generates logging.sample_tokens tokens at the end of training: collective over the
// tensor-parallel group of rank 0 (pp = sp = 1), or on rank 0 alone from the gathered global
// model (`global_params`). Skipped with a note while `last_loss` (rank 0's, the same on every
// rank) is near a uniform guess's.
void sample_at_end(Run& run, const std::vector<float>* global_params, uint64_t rng_state,
                   const std::optional<Tokenizer>& tokenizer, double last_loss, RunLog& log);

}  // namespace loom
