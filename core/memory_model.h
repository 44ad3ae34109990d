// The memory model: what every rank of a layout allocates, stage by stage, exactly as `loom train`
// allocates it (the same model layout, pipeline slots and activation arena), and whether a
// budget holds it. `loom plan` prints it, `loom train`'s launcher checks a local launch against
// this machine before any rank starts, and each rank checks its node or GPU again at start-up.
//
// Every figure for "a rank" is the largest stage's (LayoutMemory::largest, by total bytes): the
// summary, the recompute table and the budget checks all name that one stage.
//
//   const loom::LayoutMemory memory = loom::layout_memory(cfg, loom::parallel_layout(cfg));
//   std::printf("%.1f MiB per rank (stage %d)\n", memory.bytes() / (1 << 20), memory.largest);
//   std::string why = loom::memory_problem(cfg, 4, loom::host_available_bytes());  // "" fits
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "core/model.h"
#include "core/parallel_layout.h"
#include "loom.pb.h"

namespace loom {

// What one rank of pipeline coordinate `rank` holds, as `loom train` allocates it (at the current
// thread count; tensor-parallel rank 0, whose padded vocabulary makes it the largest).
struct StageMemory {
  size_t params = 0;             // floats of parameters
  size_t grads = 0;              // floats of gradients: as many, or ZeRO-2's windows
  size_t grads_per_micro = 0;    // ZeRO-2: floats reduced in every micro-batch (not step-long)
  size_t optimizer = 0;          // floats of AdamW m and v (under ZeRO: the dp rank's shards)
  size_t weight_copy_bytes = 0;  // runtime.precision BF16: the weights' bf16 copy
  // The data-parallel reduction's buffers: ZeRO's gradient shard (fp32), ZeRO-2's slots'
  // reduce-scatter results, and with parallel.grad_reduce_dtype BF16 the gradients and the shard
  // in bf16.
  size_t reduce_bytes = 0;
  ArenaSizes arena;  // activation arena, floats
  int slots = 0, boundaries = 0;
  // Everything a rank of this stage allocates, in bytes.
  double bytes() const {
    return 4.0 * (static_cast<double>(params) + grads + optimizer + arena.total) +
           static_cast<double>(weight_copy_bytes + reduce_bytes);
  }
};
StageMemory stage_memory(const config::RunConfig& cfg, const ParallelLayout& layout, int rank);

// The parameter layout (no buffers) of pipeline stage `stage` at tensor-parallel coordinate
// `tp_rank`, as `loom train` lays it out: what stage_memory sizes, and where another stage's
// tensors and ZeRO shards are.
Model stage_layout(const config::RunConfig& cfg, const ParallelLayout& layout, int stage,
                   int tp_rank);

// Every pipeline stage of a layout and the one whose ranks need the most bytes.
struct LayoutMemory {
  std::vector<StageMemory> stages;  // by pipeline coordinate, pp of them
  int largest = 0;                  // the stage needing the most bytes (the first of equals)
  const StageMemory& peak() const { return stages[static_cast<size_t>(largest)]; }
  double bytes() const { return peak().bytes(); }  // per rank: the largest stage's
};
LayoutMemory layout_memory(const config::RunConfig& cfg, const ParallelLayout& layout);

// "2.1 GiB" from 1 GiB up, else "24.1 MiB".
std::string memory_size_text(double bytes);

// A stage's memory in parts, each with the config fields it grows with: "parameters and
// gradients 1.2 GiB (model.vocab_size, …), AdamW state …, activations … (…)".
std::string memory_breakdown(const StageMemory& stage);

// Whether `ranks` ranks of this layout fit in `available` bytes (each rank as its largest
// stage): empty when they do or `available` is unknown (0), else a message giving the need per
// rank, what it is made of and the config fields each part grows with, saying that `where`
// (this machine, or a GPU) has `available`. `command` is the loom command asking ("loom train",
// "loom plan"): the message points elsewhere only for what that command does not show.
std::string memory_problem(const LayoutMemory& memory, int ranks, double available,
                           const std::string& where, const std::string& command);
// The same for a config, asked by `loom train` (its launcher and every rank).
std::string memory_problem(const config::RunConfig& cfg, int ranks, double available,
                           const std::string& where = "this machine");

// Memory this host can still give (MemAvailable of /proc/meminfo), in bytes; 0 if unknown.
double host_available_bytes();

}  // namespace loom
