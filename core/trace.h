// A timeline of every rank: timed spans (forward and backward per micro-batch and chunk, pipeline
// waits, gradient reductions, the optimizer) recorded during the first logging.trace_steps steps,
// gathered to rank 0 and written as one Chrome trace-event JSON file (configs/loom.proto
// TraceFile; opens in Perfetto and chrome://tracing). `loom trace` reads it back, draws an SVG
// Gantt chart with one row per rank and sums each rank's time per category.
//
// Times are µs since the rank's `origin`, which every rank sets right after a common barrier, so
// rows line up to within that barrier's skew. A null or disabled recorder costs one branch a span.
//
//   world.barrier();  loom::trace_start(rec);  rec.step = step;
//   { loom::TraceSpan span(&rec, "stage_forward", "forward", micro, chunk);  forward(...); }
//   loom::trace_write(rec, world, labels, run_dir + "/trace.json");  // every rank calls it
#pragma once
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "loom.pb.h"
#include "parallel/communicator.h"

namespace loom {

// Categories callers use; each has its own colour in the SVG (others are drawn brown):
// "forward", "backward", "p2p_wait" (blocked on a pipeline send/recv), "dp_reduce",
// "replica_reduce" (shared-weight gradients summed across pipeline stages), "tp_wait",
// "optimizer", "other".
struct TraceEvent {
  std::string name;
  std::string category;
  double start_us = 0, duration_us = 0;   // since the recorder's origin
  int step = -1, micro = -1, chunk = -1;  // −1: not applicable
};

struct TraceRecorder {
  bool enabled = false;  // recording is on (the first logging.trace_steps steps)
  std::chrono::steady_clock::time_point origin;  // time 0 of this rank (set right after a barrier)
  int step = -1;                                 // the step being recorded (stamped into events)
  std::vector<TraceEvent> events;
};

// origin = now, enabled = true. Call it on every rank right after the same barrier.
void trace_start(TraceRecorder& rec);

// Appends the span [start, end) as an event of rec.step; for times not bounded by one scope.
void trace_record(TraceRecorder& rec, const char* name, const char* category,
                  std::chrono::steady_clock::time_point start,
                  std::chrono::steady_clock::time_point end, int micro = -1, int chunk = -1);

// Records [construction, destruction) when `rec` is non-null and enabled at construction; else
// does nothing and reads no clock. `name` and `category` must outlive the span (use literals).
class TraceSpan {
 public:
  TraceSpan(TraceRecorder* rec, const char* name, const char* category, int micro = -1,
            int chunk = -1)
      : rec_(rec != nullptr && rec->enabled ? rec : nullptr),
        name_(name),
        category_(category),
        micro_(micro),
        chunk_(chunk) {
    if (rec_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~TraceSpan() {
    if (rec_ != nullptr)
      trace_record(*rec_, name_, category_, start_, std::chrono::steady_clock::now(), micro_,
                   chunk_);
  }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;

 private:
  TraceRecorder* rec_;
  const char* name_;
  const char* category_;
  int micro_, chunk_;
  std::chrono::steady_clock::time_point start_;
};

// Collective over `world`: every rank sends its events to rank 0 (a byte count, then the
// serialized events; rank 0 receives from one rank at a time, in rank order), which writes one
// trace-event JSON file at `path` (via path + ".tmp" and a rename) with a process_name row per
// rank, pid = rank in `world`. Only rank 0 reads `labels` (labels[r]: rank r's row name, e.g.
// "rank 3 (pp 1, dp 0, tp 1)"; one per rank). `world` moves host memory (MPI or self, not
// NCCL). Throws loom::Error on rank 0 if it cannot write the file.
void trace_write(const TraceRecorder& rec, Communicator& world,
                 const std::vector<std::string>& labels, const std::string& path);

// The JSON of `trace` as trace_write writes it, and its parse. trace_read throws loom::Error
// naming `path` when it is missing or not a trace-event JSON object.
std::string trace_to_json(const config::TraceFile& trace);
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
  double wait_fraction = 0;               // busy_us["p2p_wait"] / span_us; 0 without events
};
// One entry per row of trace_svg, in the same (pid) order.
std::vector<TraceRankSummary> trace_summary(const config::TraceFile& trace, TraceWindow window);

}  // namespace loom
