// Reading a run's timeline (RUN_DIR/trace.json, written by core/trace.h) after the fact: the
// steps it holds, an SVG Gantt chart with one row per rank, and each rank's time per category.
// What `loom trace` runs; an offline tool, not part of training.
//
//   const loom::config::TraceFile trace = loom::trace_read("run/trace.json");
//   const loom::TraceWindow window = loom::trace_window(trace, 2, 3);   // steps 2-3
//   std::ofstream("steps.svg") << loom::trace_svg(trace, window);
#pragma once
#include <map>
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

// The categories are core/trace.h's; each has its own colour in the SVG (others are brown).

// A trace file's parse. Throws loom::Error naming `path` when it is missing or not a
// trace-event JSON object.
config::TraceFile trace_read(const std::string& path);

// What a chart or summary covers: the "X" events overlapping [from_us, to_us] (µs of the trace's
// clock), clipped to it, and when first_step >= 0 only those of steps first_step..last_step, so
// that a rank already in the next step does not add to the chosen ones.
struct TraceWindow {
  double from_us = 0, to_us = 0;
  int first_step = -1, last_step = -1;
};

// Steps [first_step, last_step] (every step when first_step < 0), timed from the first start to
// the last end of their events on any rank. Throws loom::Error when no event matches, naming the
// steps the trace holds.
TraceWindow trace_window(const config::TraceFile& trace, int first_step, int last_step);

// "every step", "step 3" or "steps 2-4": the steps of `window`, for titles.
std::string trace_steps_text(TraceWindow window);

// The categories of the events in `window`: loom's, in the order listed above, then others
// alphabetically. The SVG legend and the summary's columns use this order.
std::vector<std::string> trace_categories(const config::TraceFile& trace, TraceWindow window);

// An SVG Gantt chart of `window`: a row per rank (process_name metadata, else "pid N"), a bar
// per event in the window coloured by category (nested spans thinner, on top of their parent),
// forward/backward bars labelled with the micro-batch ("3", or "3c1" for chunk 1) where wide
// enough, a time axis in ms and a legend.
std::string trace_svg(const config::TraceFile& trace, TraceWindow window);

// One rank's time in `window`, from its events in the window. Nested spans count in each of
// their categories.
struct TraceRankSummary {
  int pid = 0;
  std::string label;
  double span_us = 0;                     // first start to last end of its events
  std::map<std::string, double> busy_us;  // category → summed duration
  double wait_us = 0;        // time inside any wait (trace_is_wait), overlaps counted once
  double wait_fraction = 0;  // wait_us / span_us; 0 without events
};

// Whether a category is time a rank spends blocked on communication: pipeline sends and
// receives (p2p_wait), tensor- and sequence-parallel exchanges (tp_wait, sp_wait), the
// data-parallel and shared-weight gradient reductions it waits for (dp_reduce, replica_reduce),
// the step's loss and norm sums (sum_wait) and ZeRO-1's parameter all-gather (zero_gather).
bool trace_is_wait(const std::string& category);
// One entry per row of trace_svg, in the same (pid) order.
std::vector<TraceRankSummary> trace_summary(const config::TraceFile& trace, TraceWindow window);

}  // namespace loom
