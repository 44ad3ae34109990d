// A run's parallel layout, resolved once from its (validated) config: the mesh, the pipeline
// schedule and its pieces, how sequences are cut, how gradients are reduced, what backward
// recomputes and at which precision. `loom train` (the launcher and every rank), `loom plan`, the
// memory model and the tests read this value instead of deriving each part from the config again.
//
//   const loom::ParallelLayout layout = loom::parallel_layout(cfg);
//   loom::Pipeline pipe = loom::pipeline_create(layout, groups.pp.get(), groups.coord.pp);
//   std::printf("%s over %d stages\n", loom::pipeline_kind_name(layout.pipeline), layout.mesh.pp);
#pragma once
#include <cstddef>

#include "core/config.h"
#include "core/stage_plan.h"
#include "loom.pb.h"
#include "parallel/mesh.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/ring_attention.h"
#include "parallel/ulysses_attention.h"

namespace loom {

struct ParallelLayout {
  Mesh mesh;
  // Pipeline: the schedule, micro-batches per optimizer step on each rank (global_batch /
  // (micro_batch · dp)) and the unrolled layers' cut into pp · virtual_stages pieces.
  PipelineKind pipeline = PipelineKind::kOneFOneB;
  int micro_batches = 1;
  StagePlan stages;
  SequenceLayout sequence = SequenceLayout::kZigzag;  // sp > 1
  SequenceMethod sequence_method = SequenceMethod::kRing;  // sp > 1
  bool tp_sequence = false;                                // parallel.tp_sequence_parallel (tp > 1)
  // Data-parallel reduction over dp · sp ranks: ZeRO (stage 1 or 2, only where there is a
  // reduction), bucket size, overlap with backward, and gradients on the wire in bf16.
  bool zero = false;
  bool zero_grads = false;  // ZeRO-2: gradients in windows reduced as backward goes
  // ZeRO-2's slots for per-micro-batch gradient windows: as many as backward keeps open (the
  // residual's delay) and one reducing; 0 under the zero-bubble schedules, whose deferred
  // weight pass keeps every layer's gradients open (every unit step-long).
  int grad_window_slots = 0;
  size_t bucket_floats = 1;
  bool overlap_grad_reduce = true;
  bool bf16_grad_reduce = false;
  Recompute recompute = Recompute::kNone;
  bool bf16 = false;  // runtime.precision BF16
  int reduce_ranks() const { return mesh.dp * mesh.sp; }
};

// Throws loom::Error when the pipeline schedule cannot run the layout or the stage plan does not
// fit the model (config validation calls it for that).
ParallelLayout parallel_layout(const config::RunConfig& cfg);

}  // namespace loom
