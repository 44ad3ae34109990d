#include "core/loop_sampling.h"

#include <algorithm>
#include <cmath>

#include "base/rng.h"

namespace loom {
namespace {

using Sampling = config::LoopsSampling;

// Poisson(rate) as a sum of Poisson draws of rate ≤ 16 (Knuth's product of uniforms each), so
// e^−rate never underflows.
long poisson(Rng& rng, double rate) {
  const int parts = std::max(1, static_cast<int>(std::ceil(rate / 16.0)));
  const double limit = std::exp(-rate / parts);
  long count = 0;
  for (int i = 0; i < parts; ++i)
    for (double product = rng.uniform(); product > limit; product *= rng.uniform()) ++count;
  return count;
}

}  // namespace

LoopCounts run_loop_counts(const config::RunConfig& cfg) {
  const int loops = cfg.model().loops();
  LoopCounts out{loops, loops};
  for (const int count : eval_loop_counts(cfg)) {
    out.min = std::min(out.min, count);
    out.max = std::max(out.max, count);
  }
  const Sampling& s = cfg.model().loops_sampling();
  if (s.kind() != Sampling::FIXED) {
    out.min = std::min(out.min, s.min());
    out.max = std::max(out.max, s.max());
  }
  return out;
}

int draw_loops(const config::RunConfig& cfg, long step) {
  const Sampling& s = cfg.model().loops_sampling();
  if (s.kind() == Sampling::FIXED) return cfg.model().loops();
  // A generator of its own per step: the seed's and the step's bits mixed by SplitMix64.
  Rng rng{cfg.train().seed() ^ 0x4C4F4F5053ull};  // "LOOPS"
  rng.state = rng.next_u64() + static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ull;
  rng.next_u64();
  long loops = 0;
  if (s.kind() == Sampling::UNIFORM) {
    loops = s.min() + static_cast<long>(rng.below(static_cast<uint64_t>(s.max() - s.min() + 1)));
  } else {  // Huginn's Poisson–log-normal
    const double sigma = s.sigma();
    const double tau =
        std::log(static_cast<double>(s.mean())) - sigma * sigma / 2 + sigma * rng.normal();
    const double rate = std::exp(tau);  // far above max: max (the clamp's result anyway)
    loops = rate > 4.0 * s.max() ? s.max() : 1 + poisson(rng, rate);
  }
  return static_cast<int>(std::clamp<long>(loops, s.min(), s.max()));
}

std::vector<int> eval_loop_counts(const config::RunConfig& cfg) {
  std::vector<int> counts;
  for (const int count : cfg.train().eval_loops())
    counts.push_back(count > 0 ? count : cfg.model().loops());
  if (counts.empty()) counts.push_back(cfg.model().loops());
  return counts;
}

int eval_loops(const config::RunConfig& cfg) { return eval_loop_counts(cfg).front(); }

}  // namespace loom
