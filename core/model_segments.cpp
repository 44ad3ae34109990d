// Cutting a chunk into segments: what its slot keeps (activations, or the boundary state at a
// segment's start) under the recomputation policy and truncated backprop (core/model.h,
// ChunkSegment; docs/architecture.md, "Recomputation").
#include <algorithm>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom::model_detail {
namespace {

// Whether a unit starts at `position`: every prelude and coda layer, every loop iteration.
bool starts_unit(const Model& m, int position) {
  const int P = m.spec.loop_begin, K = m.spec.config.block_layers(),
            loop_end = P + K * m.spec.loops;
  return position <= P || position >= loop_end || (position - P) % K == 0;
}

int iterations_with_gradient(const Model& m) {
  const int k = m.spec.config.backprop_loops();
  return k == 0 || k >= m.spec.loops ? m.spec.loops : k;
}

// ⌈√n⌉ for n ≥ 1.
int ceil_sqrt(int n) {
  int g = 1;
  while (g * g < n) ++g;
  return g;
}

}  // namespace

int no_grad_end(const Model& m) {
  return m.spec.loop_begin +
         m.spec.config.block_layers() * (m.spec.loops - iterations_with_gradient(m));
}

void plan_segments(const Model& m, ModelChunk& c) {
  const int P = m.spec.loop_begin, K = m.spec.config.block_layers(),
            loop_end = P + K * m.spec.loops;
  const int cut = no_grad_end(m);
  // kSqrt groups ⌈√R⌉ iterations (R: those with gradient, counted from the cut) per segment;
  // kLoopBoundary one. A prelude or coda layer is a segment of its own.
  const int group =
      m.plan.recompute == Recompute::kSqrt ? ceil_sqrt(iterations_with_gradient(m)) : 1;
  c.segments.clear();
  c.segment_of.assign(c.end - c.begin, 0);
  c.unit_of.assign(c.end - c.begin, 0);
  long last_key = 0;
  for (int u = c.begin; u < c.end;) {
    int end = u + 1;
    while (end < c.end && !starts_unit(m, end)) ++end;
    ChunkSegment::Kind kind = ChunkSegment::kKept;
    long key = -1;  // units of one kind with equal keys in a row form one segment
    if (u >= P && u < cut) {
      kind = ChunkSegment::kNoGrad;
    } else if (m.plan.recompute != Recompute::kNone) {
      kind = ChunkSegment::kRecomputed;
      key = u >= P && u < loop_end ? (u - cut) / K / group : -2 - u;
    }
    if (c.segments.empty() || c.segments.back().kind != kind || key != last_key)
      c.segments.push_back({kind, u, u, {}, 0});
    ChunkSegment& g = c.segments.back();
    g.units.push_back(u);
    g.end = end;
    last_key = key;
    for (int p = u; p < end; ++p) {
      c.segment_of[p - c.begin] = static_cast<int>(c.segments.size()) - 1;
      c.unit_of[p - c.begin] = u;
    }
    u = end;
  }
}

}  // namespace loom::model_detail
