// A flight recorder of one rank's communication: a fixed ring of its last N operations (group,
// operation, the group's sequence number, bytes, peer, when issued / started / finished, state)
// and the step phase the rank is in. When something goes wrong it is dumped as JSON to
// RUN_DIR/flight/rank_R.json, and `loom doctor RUN_DIR` lines the dumps of all ranks up
// (docs/architecture.md, "Flight recorder").
//
// Invariants:
// - The communicator backends record into it (mpi_runtime.cpp, nccl_communicator.cpp): issue on
//   the caller's thread, start and finish on the progress thread. One mutex guards everything;
//   after construction nothing allocates except flight_add_group.
// - A collective's sequence number is its place among the group's collectives, from 0, so
//   collective #k of a group is the same call on every member. A send/recv has a pair sequence
//   instead: the n-th send to (receive from) that peer in the group. Entries also keep the
//   backend's operation index (what LOOM_FAULT's op= and timeout messages count: collectives and
//   send/recv together; the same as the sequence number in groups without send/recv).
// - Phase names are string literals (their pointers are kept).
// - Dumps are written from normal threads only: flight_dump (a failing rank), or the
//   FlightDumper thread when SIGUSR2 arrived (a counter the signal handler bumps) or a peer asked
//   (flight_request_dump, which the MPI progress thread calls on a control message).
//
//   loom::FlightRecorder rec(4096);
//   int g = loom::flight_add_group(rec, "dp", {0, 1});
//   uint64_t id = loom::flight_issue(rec, g, index, info);  // info: the op, type, count, ...
//   loom::flight_start(rec, id);  loom::flight_finish(rec, id, loom::FlightState::kCompleted);
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"

namespace loom {

enum class FlightOp : uint8_t {
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kSend,
  kRecv,
  kBarrier,
  kAllToAll
};
// kIssued: the caller asked for it; kStarted: handed to the transport; kTimedOut: still open
// after parallel.collective_timeout_s; kFailed: an error, or cancelled by an earlier failure.
enum class FlightState : uint8_t { kIssued, kStarted, kCompleted, kFailed, kTimedOut };

const char* flight_op_name(FlightOp op);           // "all_reduce", ...
const char* flight_state_name(FlightState state);  // "issued", ...

// What one operation moves.
struct FlightOpInfo {
  FlightOp op = FlightOp::kBarrier;
  DataType type = DataType::kByte;
  size_t count = 0;                // elements
  std::optional<ReduceOp> reduce;  // reductions only
  int peer = -1;                   // send/recv: the peer's group rank; broadcast: the root's
};

// Where in the step the rank is. −1: not applicable.
struct FlightPhase {
  long step = -1;                 // the optimizer step being computed, from 1
  const char* name = "start-up";  // "forward", "backward", "gradient reduction", ...
  int micro = -1, chunk = -1;     // micro-batch and model chunk
};

using FlightClock = std::chrono::steady_clock;

struct FlightEntry {
  uint64_t id = 0;     // record number on this rank, from 0; the ring keeps the last capacity
  int group = -1;      // index into FlightRecorder::groups
  long index = -1;     // the backend's operation number in the group
  long seq = -1;       // collectives: the group's collective number; −1 for send/recv
  long pair_seq = -1;  // send/recv: the n-th to / from that peer; −1 for collectives
  FlightOpInfo info;
  FlightState state = FlightState::kIssued;
  FlightClock::time_point issued, started, finished;  // started/finished: default until then
  FlightPhase phase;                                  // when issued
};

struct FlightGroup {
  std::string name;
  std::vector<int> ranks;  // global ranks, by group rank
  long operations = 0;     // operations issued (collectives and send/recv: the backend's count)
  long collectives = 0;    // collectives issued (their sequence numbers are 0 .. collectives − 1)
  long completed = 0;      // collectives completed successfully
  std::vector<long> sent, received;  // per group rank: sends issued to it, receives from it
};

// RUN_DIR/flight, where every rank writes rank_R.json.
std::string flight_dump_dir(const std::string& run_dir);
std::string flight_dump_path(const std::string& run_dir, int rank);

// What a dump says about the rank besides its recorder.
struct FlightDumpTarget {
  std::string path;  // RUN_DIR/flight/rank_R.json
  int rank = 0, world_size = 1;
  int mesh[4] = {1, 1, 1, 1};   // dp, pp, sp, tp sizes
  int coord[4] = {0, 0, 0, 0};  // this rank's dp, pp, sp, tp coordinates
};

struct FlightRecorder {
  explicit FlightRecorder(size_t capacity);
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  mutable std::mutex mutex;  // guards everything below but `requests`
  std::vector<FlightEntry> ring;
  uint64_t next_id = 0;
  std::vector<FlightGroup> groups;
  FlightPhase phase;
  std::optional<FlightDumpTarget> target;  // unset: dumps are skipped
  std::string error;                       // this rank's own failure, once it had one
  std::string request_reason;              // the latest flight_request_dump's
  std::atomic<long> requests{0};           // flight_request_dump calls so far
  std::condition_variable requested;       // notified with each request
  std::mutex dump_mutex;                   // one dump written at a time
};

// Registers a group (its members' global ranks by group rank); returns its index.
int flight_add_group(FlightRecorder& rec, const std::string& name, const std::vector<int>& ranks);

// Records the group's operation `index` (the backend's count) as issued now; returns its id for
// start and finish.
uint64_t flight_issue(FlightRecorder& rec, int group, long index, const FlightOpInfo& info);
void flight_start(FlightRecorder& rec, uint64_t id);
// `state`: kCompleted, kFailed or kTimedOut. Ids that the ring no longer holds are ignored.
void flight_finish(FlightRecorder& rec, uint64_t id, FlightState state);

// Phase marks; a null recorder is ignored. flight_step also resets the phase to `name`.
void flight_step(FlightRecorder* rec, long step, const char* name);
void flight_phase(FlightRecorder* rec, const char* name, int micro = -1, int chunk = -1);

void flight_set_target(FlightRecorder& rec, const FlightDumpTarget& target);
// Records why this rank failed; every later dump carries it (a peer's request may come after).
void flight_set_error(FlightRecorder& rec, const std::string& error);

// The dump as JSON (configs/loom.proto FlightDump): rank, mesh, host, pid, time, `trigger`, the
// rank's error, phase, groups and the ring's entries, oldest first. Times are Unix seconds.
std::string flight_dump_json(const FlightRecorder& rec, const std::string& trigger);

// Writes the dump to the target's path (via a temporary file and a rename), making its folder
// (RUN_DIR/flight) but not the run directory. Returns "" or why it could not (no target yet, no
// run directory yet, an I/O error); never throws: it runs on the way out of a failure.
std::string flight_dump(FlightRecorder& rec, const std::string& trigger);

// Asks the FlightDumper to write a dump (`reason` becomes its trigger). Any thread.
void flight_request_dump(FlightRecorder& rec, const std::string& reason);

// Waits up to `seconds` until RUN_DIR/flight/rank_R.json of every rank 0 .. world_size − 1 was
// written at or after `since`; returns how many were. A failing rank calls it before ending the
// job, so the ranks it asked have time to dump.
int flight_wait_for_dumps(const std::string& run_dir, int world_size,
                          std::chrono::system_clock::time_point since, double seconds);

// A thread that writes a dump whenever *signal_count changes (bumped by a SIGUSR2 handler; may
// be null) or flight_request_dump is called. Stops and joins when destroyed.
class FlightDumper {
 public:
  FlightDumper(FlightRecorder& rec, const std::atomic<int>* signal_count);
  ~FlightDumper();
  FlightDumper(const FlightDumper&) = delete;
  FlightDumper& operator=(const FlightDumper&) = delete;

 private:
  void run();
  FlightRecorder& rec_;
  const std::atomic<int>* signal_count_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace loom
