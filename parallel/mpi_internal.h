// Internals of the MPI backend shared by mpi_runtime.cpp (the progress thread) and
// mpi_communicator.cpp (the operations): the runtime, its groups and the operations in flight.
// Only parallel/ includes this (it includes mpi.h).
#pragma once
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/flight_recorder.h"
#include "parallel/mpi_runtime.h"

namespace loom {

using MpiClock = std::chrono::steady_clock;

// Every MPI call goes through this: a failure throws CommError naming the call and where it was
// made.
void mpi_check(int code, const char* call, const char* file, int line);
#define MPI_CHECK(call) ::loom::mpi_check((call), #call, __FILE__, __LINE__)

// The Work of an MPI operation: completed (with or without an error) by the progress thread.
class MpiWork : public Work {
 public:
  bool is_completed() override {
    std::lock_guard lock(mutex_);
    return done_;
  }
  void wait() override {
    std::unique_lock lock(mutex_);
    done_cv_.wait(lock, [&] { return done_; });
    if (!error_.empty()) throw CommError(error_);
  }
  void complete(std::string error) {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
      error_ = std::move(error);
    }
    done_cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::string error_;
};

struct GroupState;

// One operation on its way through the progress thread.
struct PendingOp {
  std::shared_ptr<MpiWork> work;
  GroupState* group = nullptr;
  long index = 0;                // per-group issue order
  bool collective = true;        // send/recv are not ordered group-wide
  int peer = -1;                 // send/recv: the other rank (group rank)
  std::string what;              // "all_reduce of 1024 float32 (sum)"
  // Posted one after the other, each when the one before completed: a large all-reduce runs as
  // chunks (see kAllReduceChunkBytes).
  std::vector<std::function<void(MPI_Request*)>> stages;
  size_t stage = 0;
  std::function<void()> finish;  // after MPI completed: kAvg's division
  std::vector<int> counts, displacements;  // kept alive for the v-collectives
  MpiClock::time_point due;         // fault injection: not posted before
  MpiClock::time_point posted_at;
  MPI_Request request = MPI_REQUEST_NULL;
  FlightOpInfo flight;                // what the flight recorder records
  std::optional<uint64_t> flight_id;  // its entry, once issued with a recorder
};

struct GroupState {
  int id = 0;
  std::string name;
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<int> global_ranks;
  long issued = 0;  // operations issued by the caller (assigns PendingOp::index)
  long posted = 0;  // operations handed to MPI (what peers are told on a timeout query)
  int flight_group = -1;  // in the flight recorder, when there is one
  // A posted operation with stages still to post (a chunked all-reduce): the group's later
  // operations wait for it, so every rank hands the group's collectives to MPI in one order.
  const PendingOp* unfinished = nullptr;
};

class MpiRuntime {
 public:
  explicit MpiRuntime(const MpiRuntimeOptions& options);
  ~MpiRuntime();

  int world_rank = 0, world_size = 1, local_size = 1;
  std::vector<std::string> host_names;  // of every rank (MPI_Get_processor_name)
  MpiRuntimeOptions options;

  GroupState* add_group(const std::string& name, MPI_Comm comm);
  // MPI's reduction for `op` over `type` (kAvg: the sum; the caller divides). bf16 has none of
  // MPI's own: user operations that add (or compare) in fp32 and round back.
  MPI_Op reduce_op(ReduceOp op, DataType type) const;
  void enqueue(std::unique_ptr<PendingOp> op);
  std::chrono::system_clock::time_point request_flight_dumps(int reason);
  [[noreturn]] void abort_job(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  void run();
  bool post_ready(MpiClock::time_point now);
  bool test_posted(MpiClock::time_point now);
  bool serve_control();
  void fail_all(const std::string& why);  // records `why` unless a failure came first
  std::string diagnose(const PendingOp& op, double waited_s);
  std::string rank_name(int rank) const;
  void number_locked(PendingOp& op);  // its index in the group; recorded as issued
  void record_finish(const PendingOp& op, FlightState state);
  void send_dump_requests();

  MPI_Comm control_ = MPI_COMM_NULL;  // a duplicate of the world for control messages
  MPI_Op bf16_sum_ = MPI_OP_NULL, bf16_max_ = MPI_OP_NULL;
  std::list<GroupState> groups_;      // stable addresses
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<PendingOp>> incoming_;  // guarded by mutex_
  bool stopping_ = false;                            // guarded by mutex_
  // Progress thread only:
  std::list<std::unique_ptr<PendingOp>> waiting_;    // issued, not yet posted (order kept)
  std::vector<const GroupState*> held_;              // post_ready's groups held back this poll
  // Set by the first operation that fails (error, timeout, injected failure). From then on no
  // MPI call is made for the caller's operations — their buffers may be freed while the job
  // aborts — and every open or later operation fails at once.
  std::atomic<bool> failed_{false};
  std::string first_failure_;  // guarded by mutex_: the message of that first failure
  std::list<std::unique_ptr<PendingOp>> posted_;
  int64_t query_in_[2] = {0, 0};
  MPI_Request query_request_ = MPI_REQUEST_NULL;
  std::list<std::pair<MPI_Request, std::unique_ptr<int64_t[]>>> replies_;
  // Flight dumps: a peer's request {reason, its rank}, and ours to send (a kDump* reason; 0:
  // none) at most once, made at dump_requested_at_ (guarded by mutex_).
  int64_t dump_in_[2] = {0, 0};
  MPI_Request dump_request_ = MPI_REQUEST_NULL;
  std::atomic<int> dump_reason_{0};
  bool dump_requests_sent_ = false;  // progress thread only
  std::optional<std::chrono::system_clock::time_point> dump_requested_at_;
  // LOOM_FAULT hang, skip and swap act once (guarded by mutex_); swap's held-back operation.
  bool fault_fired_ = false;
  std::unique_ptr<PendingOp> swapped_;
  std::thread thread_;
};

}  // namespace loom
