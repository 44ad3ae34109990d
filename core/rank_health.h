// Per-rank health of a multi-rank run: each rank's busy time per step (its step time less the
// time it waited on communication, so the rank the others wait for has the most), gathered
// every logging interval, and a warning for a rank that stays slower than the rest.
//
//   const RankHealth h = rank_health_gather(world, busy_ms_per_step);   // collective
//   if (std::string w = straggler_check(watch, h, pct); !w.empty()) log.warn(w);
#pragma once
#include <string>

#include "parallel/communicator.h"

namespace loom {

struct RankHealth {
  double min_ms = 0, median_ms = 0, max_ms = 0;
  int slowest = 0;          // the rank with the most busy time
  double others_ms = 0;     // the median of the other ranks' (what the slowest is compared with)
};

// Collective over `world`: every rank's `busy_ms`.
RankHealth rank_health_gather(Communicator& world, double busy_ms);

// Consecutive intervals in which the same rank was slowest by more than the threshold.
struct StragglerWatch {
  int rank = -1, intervals = 0;
};

// Counts this interval; returns a warning once the same rank has been slower than the other
// ranks' median by more than `pct` percent in `kStragglerIntervals` intervals in a row (and again every such run).
constexpr int kStragglerIntervals = 3;
std::string straggler_check(StragglerWatch& watch, const RankHealth& health, double pct);

}  // namespace loom
