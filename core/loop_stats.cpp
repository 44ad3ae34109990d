// logging.loop_stats: per iteration of the shared block, the RMS of the state entering it, the
// relative change the iteration makes and the norm of the gradient reaching its input
// (core/model.h, LoopStatSums; docs/architecture.md, "Loop statistics"). The walks call the
// hooks at each position boundary; this file turns states into sums.
#include <cmath>
#include <limits>

#include "base/error.h"
#include "core/model_internal.h"

namespace loom {
using model_detail::kb;
namespace {

// Iteration r when `position` is where iteration r starts (r = loops: where the loop ends);
// −1 elsewhere.
int iteration_at(const Model& m, int position) {
  const int K = m.spec.config.block_layers(), offset = position - m.spec.loop_begin;
  if (offset < 0 || offset % K != 0 || offset / K > m.spec.loops) return -1;
  return offset / K;
}

// host ← the (B·T·C) state at `state` (the backend's activation type), in fp32.
void widen(Model& m, const void* state, size_t NC, std::vector<float>& host) {
  LoopStatSums& s = m.passes.loops;
  if (s.widened.size() < NC) s.widened = kernels::DeviceArray<float>(m.buf.backend, NC);
  kb(m).from_activation(s.widened.data(), state, NC);
  host.resize(NC);
  s.widened.download(host.data(), NC);
}

double squares(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += static_cast<double>(v) * v;
  return sum;
}

// Whether this rank's stream counts: tensor-parallel ranks hold the same one, or with sequence
// parallelism each its own rows of it.
bool counted_here(const Model& m) { return m.par.tp.sequence || m.par.tp.rank == 0; }

}  // namespace

void model_collect_loop_stats(Model& m, bool on) { m.passes.loops.on = on; }

std::vector<double> model_loop_stat_sums(const Model& m) {
  const LoopStatSums& s = m.passes.loops;
  std::vector<double> sums;
  for (size_t r = 0; r < s.stream_squares.size(); ++r)
    sums.insert(sums.end(), {s.stream_squares[r], s.change_squares[r], s.grad_squares[r],
                             s.entries[r], s.changes[r]});
  return sums;
}

LoopStats loop_stats_of(const std::vector<double>& sums, double tokens, int C, int replicas) {
  LoopStats out;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (size_t k = 0; k + 5 <= sums.size(); k += 5) {
    const double stream = sums[k], change = sums[k + 1], grad = sums[k + 2];
    const double entries = sums[k + 3], changes = sums[k + 4];
    out.rms.push_back(std::sqrt(stream / (tokens * C)));
    // Measured on every walk that saw the iteration's start, or not at all.
    out.change.push_back(changes == entries && stream > 0 ? std::sqrt(change / stream) : nan);
    // Each rank's loss was the mean over its own tokens: 1/replicas of the step's mean.
    out.grad_norm.push_back(std::sqrt(grad) / replicas);
  }
  return out;
}

namespace model_detail {

void loop_stats_begin(Model& m) {
  LoopStatSums& s = m.passes.loops;
  const size_t R = s.on ? static_cast<size_t>(m.spec.loops) : 0;
  for (std::vector<double>* v :
       {&s.stream_squares, &s.change_squares, &s.grad_squares, &s.entries, &s.changes})
    v->assign(R, 0.0);
  s.open = -1;
}

void loop_stats_state(Model& m, int position, const void* stream, const void* extra, int begin,
                      int end, size_t NC) {
  LoopStatSums& s = m.passes.loops;
  if (!s.on || !counted_here(m)) return;
  if (position == begin) s.open = -1;
  const int r = iteration_at(m, position);
  if (r < 0) return;
  widen(m, stream, NC, s.host);
  if (extra) {  // the walk's end on the last stage: the pending output not added yet
    std::vector<float> more;
    widen(m, extra, NC, more);
    for (size_t k = 0; k < NC; ++k) s.host[k] += more[k];
  }
  if (s.open == r - 1 && r >= 1) {  // the iteration that just ended started in this walk
    double sum = 0;
    for (size_t k = 0; k < NC; ++k) {
      const double d = static_cast<double>(s.host[k]) - s.entry[k];
      sum += d * d;
    }
    s.change_squares[r - 1] += sum;
    s.changes[r - 1] += 1;
    s.open = -1;
  }
  if (r == m.spec.loops || position == end) return;  // the loop's end, or the next walk's start
  s.stream_squares[r] += squares(s.host);
  s.entries[r] += 1;
  if (position + m.spec.config.block_layers() <= end) {  // its end is in this walk too
    s.entry.swap(s.host);
    s.open = r;
  }
}

void loop_stats_grad(Model& m, int position, const void* grad, size_t NC) {
  LoopStatSums& s = m.passes.loops;
  if (!s.on || !counted_here(m)) return;
  const int r = iteration_at(m, position);
  if (r < 0 || r == m.spec.loops) return;
  widen(m, grad, NC, s.host);
  s.grad_squares[r] += squares(s.host);
}

}  // namespace model_detail
}  // namespace loom
