// The MPI side of one process: initialisation, the progress thread that drives every MPI
// operation, communicators over host memory, fault injection, and aborting the job.
//
// All MPI calls of a Communicator go through one progress thread per process. It posts each
// operation as a non-blocking MPI call in the order the caller issued it, keeps testing the
// posted ones (so they progress while the caller computes), completes their Work handles, and
// enforces the collective timeout: an operation still open after `timeout_s` asks the group's
// members how far they have got, and fails with a message naming the group, the operation and
// the ranks that had not reached it. Nothing outside parallel/ sees mpi.h.
//
//   std::unique_ptr<loom::MpiRuntime> mpi = loom::mpi_runtime_init({.timeout_s = 300});
//   std::unique_ptr<loom::Communicator> world = loom::mpi_world(*mpi);
//   world->all_reduce(&x, 1, loom::ReduceOp::kSum);
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace loom {

// Makes a chosen rank's operation misbehave, so timeouts, dead ranks and hangs are tested rather
// than hoped for. Operations are counted per group, from 0, in the order they are issued.
// With op = kEveryOp every operation of the group misbehaves: for kDelay that is a fixed latency
// added to each operation (each is posted `seconds` after it was issued; a group's operations
// still post in issue order, so operations issued close together complete close together, as
// over a slow link), for kFail and kKill the group's first operation.
// The hangs act once, at operation `op` (kEveryOp is refused): kHang stops the calling thread
// before it issues the operation, for `seconds` (0: until the job ends) — a rank stuck outside
// communication; kSkip does not issue it (its Work completes at once, untouched, and the group's
// next operation takes its number); kSwap holds it back and issues it right after the group's
// next operation, so this rank's #op is the others' #op + 1 (a caller that waits on it before
// issuing another operation on the group then never gets it).
struct FaultInjection {
  enum class Action { kNone, kDelay, kFail, kKill, kHang, kSkip, kSwap };
  static constexpr int kEveryRank = -1;  // rank=*
  static constexpr long kEveryOp = -1;   // op=*
  Action action = Action::kNone;
  int rank = 0;        // global rank that misbehaves, or kEveryRank
  std::string group;   // group name ("world", "dp", ...)
  long op = 0;         // index of the operation on that group, or kEveryOp
  double seconds = 0;  // kDelay: the operation is posted this much later

  // Whether operation `index` of group `group_name`, issued on `global_rank`, misbehaves.
  bool applies_to(int global_rank, const std::string& group_name, long index) const;
};

// Parses "rank=R|*,group=G,op=K|*,action=delay|fail|kill|hang|skip|swap[,seconds=S]"
// (LOOM_FAULT); "" = none. "*" means every rank or every operation. Throws loom::Error naming the
// bad part.
FaultInjection parse_fault_injection(const std::string& spec);

struct FlightRecorder;  // parallel/flight_recorder.h

struct MpiRuntimeOptions {
  double timeout_s = 300;  // parallel.collective_timeout_s
  FaultInjection fault;
  // Records every operation (issued, posted, finished) when set; must outlive the runtime. A
  // collective timeout asks every rank to dump it (flight_request_dump), and so does
  // mpi_request_flight_dumps.
  FlightRecorder* flight = nullptr;
};

class MpiRuntime;  // opaque: owns MPI (initialised once per process) and the progress thread

// Initialises MPI with thread support and starts the progress thread. Throws loom::Error when
// MPI cannot start. The runtime finalises MPI when destroyed; MPI cannot be initialised again.
std::unique_ptr<MpiRuntime> mpi_runtime_init(const MpiRuntimeOptions& options);
void mpi_runtime_destroy(MpiRuntime* runtime);  // what the unique_ptr's deleter calls

int mpi_world_rank(const MpiRuntime& runtime);
int mpi_world_size(const MpiRuntime& runtime);
// Ranks of this job on this node (sharing its memory and cores).
int mpi_local_size(const MpiRuntime& runtime);
// The host name of every rank (MPI_Get_processor_name), gathered when MPI started.
const std::vector<std::string>& mpi_host_names(const MpiRuntime& runtime);

// A communicator over all ranks, named `name` (the job's own checks before its groups exist use
// another name, so LOOM_FAULT's operation numbers on "world" stay those of training).
std::unique_ptr<Communicator> mpi_world(MpiRuntime& runtime, const std::string& name = "world");

// Splits the world: ranks passing the same color form one group, ordered by key. Collective
// over the world: every rank calls it, in the same order as the other splits.
std::unique_ptr<Communicator> mpi_split(MpiRuntime& runtime, const std::string& name, int color,
                                        int key);

// Asks every other rank's flight recorder to dump (a control message its progress thread
// answers, even while its caller is stuck), once per process: a collective timeout has already
// asked. Returns when the request was first made, for flight_wait_for_dumps. Any thread.
std::chrono::system_clock::time_point mpi_request_flight_dumps(MpiRuntime& runtime);

// Ends the whole job (MPI_Abort on the world) with `code`. Call after printing why.
[[noreturn]] void mpi_abort(MpiRuntime& runtime, int code);

}  // namespace loom

template <>
struct std::default_delete<loom::MpiRuntime> {
  void operator()(loom::MpiRuntime* runtime) const { loom::mpi_runtime_destroy(runtime); }
};
