#include "core/memory_model.h"

#include <cstdio>
#include <fstream>

#include "base/names.h"
#include "core/backend.h"
#include "core/loop_sampling.h"
#include "core/pipeline.h"
#include "parallel/grad_reducer.h"

namespace loom {

Model stage_layout(const config::RunConfig& cfg, const ParallelLayout& layout, int stage,
                   int tp_rank) {
  const Mesh& mesh = layout.mesh;
  // Sizes follow the precision, not the device: the host backend at runtime.precision plans them.
  TensorParallel tp{mesh.tp, tp_rank, nullptr};
  tp.sequence = layout.tp_sequence;
  return model_layout(cfg.model(), make_host_backend(cfg.runtime()), tp, {layout.stages, stage},
                      {mesh.sp, 0, nullptr, layout.sequence, layout.sequence_method});
}

StageMemory stage_memory(const config::RunConfig& cfg, const ParallelLayout& layout, int rank) {
  Model model = stage_layout(cfg, layout, rank, 0);
  const Pipeline pipe = pipeline_create(layout, nullptr, rank);
  StageMemory out;
  out.params = model.layout.num_params;
  const size_t act_bytes = model.buf.backend->activation_bytes();
  out.weight_copy_bytes = act_bytes == sizeof(float) ? 0 : model.layout.num_params * act_bytes;
  out.grads = model.layout.num_params;
  size_t shard = layout.zero
                     ? grad_reducer_shard_floats(model.layout.num_params, layout.bucket_floats,
                                                 layout.reduce_ranks(), 0)
                     : 0;
  if (layout.zero_grads) {  // ZeRO-2: windows, not a whole gradient (parallel/grad_windows.h)
    const GradWindowsPlan w = grad_windows_plan(model_grad_units(model), layout.grad_window_slots,
                                                layout.reduce_ranks(), 0);
    out.grads = w.window_floats();
    out.grads_per_micro = model.layout.num_params - w.dedicated_floats;
    shard = w.shard_floats;
    out.reduce_bytes += w.slots * w.received_floats * sizeof(float);
  }
  out.optimizer = 2 * (layout.zero ? shard : model.layout.num_params);
  out.reduce_bytes += shard * sizeof(float);
  if (layout.reduce_ranks() > 1 && layout.bf16_grad_reduce)
    out.reduce_bytes += (model.layout.num_params + shard) * act_bytes;
  out.slots = pipe.slots;
  out.boundaries = pipe.boundaries;
  const LoopCounts loops = run_loop_counts(cfg);
  model_set_loop_range(model, loops.min, loops.max);
  out.arena = model_arena_sizes(model, cfg.train().micro_batch(), cfg.train().seq_len() / layout.mesh.sp,
                                pipe.slots, pipe.boundaries, pipe.split_backward, layout.recompute);
  return out;
}

LayoutMemory layout_memory(const config::RunConfig& cfg, const ParallelLayout& layout) {
  LayoutMemory out;
  for (int r = 0; r < layout.mesh.pp; ++r) {
    out.stages.push_back(stage_memory(cfg, layout, r));
    if (out.stages.back().bytes() > out.bytes()) out.largest = r;
  }
  return out;
}

std::string memory_size_text(double bytes) {
  constexpr double kMiB = 1024.0 * 1024.0;
  char out[32];
  if (bytes >= 1024.0 * kMiB)
    std::snprintf(out, sizeof(out), "%.1f GiB", bytes / (1024.0 * kMiB));
  else
    std::snprintf(out, sizeof(out), "%.1f MiB", bytes / kMiB);
  return out;
}

std::string memory_breakdown(const StageMemory& s) {
  std::string out =
      "parameters and gradients " + memory_size_text(4.0 * (s.params + s.grads)) +
      " (model.vocab_size, d_model, d_mlp and the unique layers: prelude_layers, block_layers, "
      "coda_layers; ÷ parallel.tp and pp), AdamW state " +
      memory_size_text(4.0 * s.optimizer) +
      " (as the parameters; ÷ dp with parallel.zero_stage=1 or 2), activations " +
      memory_size_text(4.0 * s.arena.total) +
      " (train.micro_batch × train.seq_len × d_model × unrolled layers, loops included; "
      "train.recompute shrinks them)";
  if (s.weight_copy_bytes > 0)
    out += ", bf16 weight copy " + memory_size_text(static_cast<double>(s.weight_copy_bytes));
  if (s.reduce_bytes > 0)
    out += ", reduce buffers " + memory_size_text(static_cast<double>(s.reduce_bytes));
  return out;
}

std::string memory_problem(const LayoutMemory& memory, int ranks, double available,
                           const std::string& where, const std::string& command) {
  if (available <= 0 || memory.bytes() * ranks <= available) return "";
  return "this layout needs " + memory_size_text(memory.bytes()) + " per rank × " +
         counted(ranks, "rank") + " but " + where + " has " + memory_size_text(available) +
         " available: " + memory_breakdown(memory.peak()) +
         ". Shrink the largest, or spread the model over more ranks or machines" +
         (command == "loom plan" ? "" : " (loom plan shows the layout's memory)");
}

std::string memory_problem(const config::RunConfig& cfg, int ranks, double available,
                           const std::string& where) {
  if (available <= 0) return "";
  return memory_problem(layout_memory(cfg, parallel_layout(cfg)), ranks, available, where,
                        "loom train");
}

double host_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024.0;
  return 0;
}

}  // namespace loom
