#include "core/rank_health.h"

#include <algorithm>
#include <cstdio>
#include <vector>

namespace loom {

RankHealth rank_health_gather(Communicator& world, double busy_ms) {
  const int n = world.size();
  std::vector<float> all(static_cast<size_t>(n));
  const float mine = static_cast<float>(busy_ms);
  world.all_gather(&mine, all.data(), all.size());
  RankHealth h;
  h.slowest = static_cast<int>(std::max_element(all.begin(), all.end()) - all.begin());
  h.max_ms = all[h.slowest];
  h.min_ms = *std::min_element(all.begin(), all.end());
  std::vector<float> sorted = all;
  std::sort(sorted.begin(), sorted.end());
  auto median = [](const std::vector<float>& v) {
    const size_t m = v.size();
    return m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
  };
  h.median_ms = median(sorted);
  sorted.pop_back();  // the slowest's own time
  h.others_ms = sorted.empty() ? h.max_ms : median(sorted);
  return h;
}

std::string straggler_check(StragglerWatch& watch, const RankHealth& health, double pct) {
  const bool slow = pct > 0 && health.max_ms > health.others_ms * (1.0 + pct / 100.0);
  if (!slow) {
    watch = {};
    return "";
  }
  watch.intervals = watch.rank == health.slowest ? watch.intervals + 1 : 1;
  watch.rank = health.slowest;
  if (watch.intervals % kStragglerIntervals != 0) return "";
  char text[256];
  std::snprintf(text, sizeof(text),
                "rank %d is a straggler: busy %.1f ms per step against the other ranks' median "
                "%.1f (+%.0f%%, over %.0f%% in %d logging intervals in a row; "
                "logging.straggler_pct)",
                health.slowest, health.max_ms, health.others_ms,
                100.0 * (health.max_ms / health.others_ms - 1.0), pct, watch.intervals);
  return text;
}

}  // namespace loom
