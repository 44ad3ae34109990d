// A timeline of every rank: timed spans (forward and backward per micro-batch and chunk, pipeline
// waits, gradient reductions, the optimizer) recorded during the first logging.trace_steps steps,
// gathered to rank 0 and written as one Chrome trace-event JSON file (configs/loom.proto
// TraceFile; opens in Perfetto and chrome://tracing). `loom trace` reads it back, draws an SVG
// Gantt chart with one row per rank and sums each rank's time per category (tools/trace_view.h).
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
// "sp_wait", "sum_wait" (the step's loss and gradient-norm sums), "zero_gather" (ZeRO-1's
// parameter all-gather, inside "optimizer"), "optimizer", "recompute", "other".
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

// The JSON of `trace` as trace_write writes it (tools/trace_view.h reads it back).
std::string trace_to_json(const config::TraceFile& trace);

}  // namespace loom
