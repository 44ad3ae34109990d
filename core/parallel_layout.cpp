#include "core/parallel_layout.h"

#include <algorithm>
#include <string>

#include "base/error.h"
#include "core/layout_advice.h"

namespace loom {
namespace {

PipelineKind pipeline_kind(config::ParallelConfig::PipelineSchedule schedule) {
  switch (schedule) {
    case config::ParallelConfig::GPIPE:
      return PipelineKind::kGPipe;
    case config::ParallelConfig::ONE_F_ONE_B:
      return PipelineKind::kOneFOneB;
    case config::ParallelConfig::INTERLEAVED_1F1B:
      return PipelineKind::kInterleaved1F1B;
    case config::ParallelConfig::ZERO_BUBBLE_H1:
      return PipelineKind::kZeroBubbleH1;
    case config::ParallelConfig::ZERO_BUBBLE_V:
      return PipelineKind::kZeroBubbleV;
  }
  LOOM_CHECK(false);
}

Recompute recompute_policy(config::TrainConfig::Recompute recompute) {
  switch (recompute) {
    case config::TrainConfig::NONE:
      return Recompute::kNone;
    case config::TrainConfig::LOOP_BOUNDARY:
      return Recompute::kLoopBoundary;
    case config::TrainConfig::SQRT:
      return Recompute::kSqrt;
  }
  LOOM_CHECK(false);
}

// `e`'s message, and `advice` (values that work) after it when there is any.
Error with_advice(const Error& e, const std::string& advice) {
  return Error(advice.empty() ? std::string(e.what()) : std::string(e.what()) + "; " + advice);
}

}  // namespace

ParallelLayout parallel_layout(const config::RunConfig& cfg) {
  const config::ParallelConfig& p = cfg.parallel();
  ParallelLayout out;
  out.mesh = {.dp = p.dp(), .pp = p.pp(), .sp = p.sp(), .tp = p.tp()};
  out.pipeline = pipeline_kind(p.pipeline_schedule());
  out.micro_batches = grad_accum_steps(cfg);
  try {
    pipeline_check(out.pipeline, p.pp(), out.micro_batches, p.virtual_stages());
  } catch (const Error& e) {  // only the micro-batch rules are the batch's to fix
    const bool batch = std::string(e.what()).find("micro-batches") != std::string::npos;
    throw with_advice(e, batch ? layout_advice_batch(cfg) : "");
  }
  try {
    out.stages = stage_plan_create(cfg);
  } catch (const Error& e) {
    throw with_advice(e, layout_advice_pieces(cfg));
  }
  out.sequence_method = p.sequence_method() == config::ParallelConfig::ULYSSES
                            ? SequenceMethod::kUlysses
                            : SequenceMethod::kRing;
  out.tp_sequence = p.tp_sequence_parallel() && p.tp() > 1;
  out.sequence = p.sequence_layout() == config::ParallelConfig::CONTIGUOUS
                     ? SequenceLayout::kContiguous
                     : SequenceLayout::kZigzag;
  out.zero = p.zero_stage() >= 1 && out.reduce_ranks() > 1;
  out.zero_grads = out.zero && p.zero_stage() == 2;
  const bool split =
      out.pipeline == PipelineKind::kZeroBubbleH1 || out.pipeline == PipelineKind::kZeroBubbleV;
  out.grad_window_slots =
      split ? 0 : (cfg.model().residual() == config::ModelConfig::LADDER ? 2 : 1) + 1;
  out.bucket_floats = std::max<size_t>(1, static_cast<size_t>(p.bucket_mb() * (1 << 20) / 4));
  out.overlap_grad_reduce = p.overlap_grad_reduce();
  out.bf16_grad_reduce = p.grad_reduce_dtype() == config::RuntimeConfig::BF16;
  out.recompute = recompute_policy(cfg.train().recompute());
  out.bf16 = cfg.runtime().precision() == config::RuntimeConfig::BF16;
  return out;
}

}  // namespace loom
