#include "parallel/mpi_runtime.h"

#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <sstream>

#include "base/error.h"
#include "kernels/cpu/bf16.h"
#include "parallel/mpi_internal.h"

namespace loom {
namespace {

// Control messages between progress threads: "how many operations have you posted on group g?"
// and "dump your flight recorder" ({reason, sender}).
constexpr int kQueryTag = 1, kReplyTag = 2, kDumpTag = 3;
constexpr int kDumpTimeout = 1, kDumpError = 2;

// LOOM_FAULT hang: the caller stops here, outside any MPI call, its progress thread still
// answering peers.
void hang_for(double seconds) {
  const auto until = MpiClock::now() + std::chrono::duration_cast<MpiClock::duration>(
                                           std::chrono::duration<double>(seconds));
  while (seconds <= 0 || MpiClock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

}  // namespace

void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw CommError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  std::string(text, length));
}

namespace {

// MPI user operations over bf16 (MPI_UINT16_T): in fp32, rounded back to nearest even.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    b[i] = kernels::cpu::bf16_from_float(kernels::cpu::bf16_to_float(a[i]) +
                                         kernels::cpu::bf16_to_float(b[i]));
}
void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const uint16_t* a = static_cast<const uint16_t*>(in);
  uint16_t* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    if (kernels::cpu::bf16_to_float(a[i]) > kernels::cpu::bf16_to_float(b[i])) b[i] = a[i];
}

long env_long(const char* name) {
  const char* value = std::getenv(name);
  return value && *value ? std::strtol(value, nullptr, 10) : 0;
}

// Whether the launcher placed this job's ranks on more than one node, from what mpirun (local
// and world size) or srun (the step's nodes) put in the environment before MPI starts.
bool job_spans_nodes() {
  const long world = env_long("OMPI_COMM_WORLD_SIZE");
  const long local = env_long("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (world > 0 && local > 0 && local < world) return true;
  return env_long("SLURM_STEP_NUM_NODES") > 1 || env_long("SLURM_NNODES") > 1;
}

}  // namespace

MpiRuntime::MpiRuntime(const MpiRuntimeOptions& opts) : options(opts) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) throw Error("MPI was already initialised in this process");
  // Open MPI's TCP transport moves data only inside MPI calls unless it has its own progress
  // thread; with it, a tensor-parallel all-reduce over TCP advances while this rank computes
  // even when the cores are busy (measured: the ladder residual hid 63% of the exposed
  // communication over TCP instead of 31%). A user's own setting wins; other transports ignore
  // it. Not in a job on several nodes: there that thread crashes at random in Open MPI 4.1
  // (a null callback in its event loop, about one srun start in six on the namespaced test
  // cluster; upstream open-mpi/ompi#5902), so it stays opt-in (docs/launching.md: Environment
  // variables).
  if (!job_spans_nodes()) setenv("OMPI_MCA_btl_tcp_progress_thread", "1", 0);
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
    throw Error("MPI_Init_thread failed: cannot start the MPI runtime");
  // The progress thread makes every MPI call except abort, which may come from any thread.
  if (provided < MPI_THREAD_MULTIPLE)
    throw Error("this MPI library does not provide MPI_THREAD_MULTIPLE (provided level " +
                std::to_string(provided) + "); loom needs it for its progress thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL,
                                &node));
  MPI_CHECK(MPI_Comm_size(node, &local_size));
  MPI_Comm_free(&node);
  // Every rank's host name, for placement checks and messages that name a rank's node.
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  MPI_CHECK(MPI_Get_processor_name(name, &length));
  std::vector<char> names(static_cast<size_t>(MPI_MAX_PROCESSOR_NAME) * world_size);
  MPI_CHECK(MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names.data(),
                          MPI_MAX_PROCESSOR_NAME, MPI_CHAR, MPI_COMM_WORLD));
  for (int r = 0; r < world_size; ++r) {
    const char* begin = names.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME;
    host_names.emplace_back(begin, strnlen(begin, MPI_MAX_PROCESSOR_NAME));
  }
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &control_));
  MPI_CHECK(MPI_Op_create(&bf16_sum, 1, &bf16_sum_));
  MPI_CHECK(MPI_Op_create(&bf16_max, 1, &bf16_max_));
  MPI_CHECK(MPI_Irecv(query_in_, 2, MPI_INT64_T, MPI_ANY_SOURCE, kQueryTag, control_,
                      &query_request_));
  MPI_CHECK(
      MPI_Irecv(dump_in_, 2, MPI_INT64_T, MPI_ANY_SOURCE, kDumpTag, control_, &dump_request_));
  thread_ = std::thread([this] { run(); });
}

MpiRuntime::~MpiRuntime() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  // After a failure the job is meant to abort: abandoned requests make MPI_Finalize invalid.
  if (failed_) return;
  // Peers may still query us while they finish: keep answering until everybody is here.
  MPI_Request barrier;
  MPI_Ibarrier(control_, &barrier);
  for (int done = 0; !done;) {
    MPI_Test(&barrier, &done, MPI_STATUS_IGNORE);
    serve_control();
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (MPI_Request* r : {&query_request_, &dump_request_}) {
    MPI_Cancel(r);
    MPI_Wait(r, MPI_STATUS_IGNORE);
  }
  for (auto& [request, buffer] : replies_) MPI_Wait(&request, MPI_STATUS_IGNORE);
  for (GroupState& g : groups_)
    if (g.comm != MPI_COMM_WORLD) MPI_Comm_free(&g.comm);
  MPI_Comm_free(&control_);
  MPI_Op_free(&bf16_sum_);
  MPI_Op_free(&bf16_max_);
  MPI_Finalize();
}

MPI_Op MpiRuntime::reduce_op(ReduceOp op, DataType type) const {
  if (type == DataType::kBfloat16) return op == ReduceOp::kMax ? bf16_max_ : bf16_sum_;
  return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM;
}

GroupState* MpiRuntime::add_group(const std::string& name, MPI_Comm comm) {
  GroupState g;
  g.id = static_cast<int>(groups_.size());
  g.name = name;
  g.comm = comm;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int size = 0;
  MPI_CHECK(MPI_Comm_size(comm, &size));
  g.global_ranks.resize(size);
  MPI_CHECK(MPI_Allgather(&world_rank, 1, MPI_INT, g.global_ranks.data(), 1, MPI_INT, comm));
  if (options.flight) g.flight_group = flight_add_group(*options.flight, name, g.global_ranks);
  std::lock_guard lock(mutex_);
  groups_.push_back(std::move(g));
  return &groups_.back();
}

void MpiRuntime::enqueue(std::unique_ptr<PendingOp> op) {
  using Action = FaultInjection::Action;
  const FaultInjection& f = options.fault;
  op->due = MpiClock::now();
  {
    std::unique_lock lock(mutex_);
    GroupState* group = op->group;
    if (!fault_fired_ && f.applies_to(world_rank, group->name, group->issued)) {
      switch (f.action) {
        case Action::kKill:
          raise(SIGKILL);
          break;
        case Action::kFail: {
          number_locked(*op);
          const std::string error = "injected failure of " + op->what + " #" +
                                    std::to_string(op->index) + " on group " + group->name +
                                    " (LOOM_FAULT)";
          record_finish(*op, FlightState::kFailed);
          op->work->complete(error);
          failed_ = true;
          if (first_failure_.empty()) first_failure_ = error;
          return;
        }
        case Action::kDelay:
          op->due += std::chrono::duration_cast<MpiClock::duration>(
              std::chrono::duration<double>(f.seconds));
          break;
        case Action::kHang:
          fault_fired_ = true;
          lock.unlock();
          hang_for(f.seconds);
          lock.lock();
          break;
        case Action::kSkip:
          fault_fired_ = true;
          op->work->complete("");
          return;
        case Action::kSwap:
          fault_fired_ = true;
          swapped_ = std::move(op);
          return;
        case Action::kNone:
          break;
      }
    }
    number_locked(*op);
    incoming_.push_back(std::move(op));
    if (swapped_ && swapped_->group == group) {
      number_locked(*swapped_);
      incoming_.push_back(std::move(swapped_));
    }
  }
  wake_.notify_all();
}

void MpiRuntime::number_locked(PendingOp& op) {
  op.index = op.group->issued++;
  if (options.flight)
    op.flight_id = flight_issue(*options.flight, op.group->flight_group, op.index, op.flight);
}

// Before the Work completes: its waiter may dump the recorder at once.
void MpiRuntime::record_finish(const PendingOp& op, FlightState state) {
  if (options.flight && op.flight_id) flight_finish(*options.flight, *op.flight_id, state);
}

std::chrono::system_clock::time_point MpiRuntime::request_flight_dumps(int reason) {
  std::lock_guard lock(mutex_);
  if (!dump_requested_at_) {
    dump_requested_at_ = std::chrono::system_clock::now();
    dump_reason_ = reason;
  }
  return *dump_requested_at_;
}

// Sends the flight-dump request to every other rank, once; their progress threads answer it
// even when their callers are stuck. The sends' buffers live in replies_ until they complete.
void MpiRuntime::send_dump_requests() {
  const int reason = dump_reason_.load();
  if (reason == 0 || dump_requests_sent_) return;
  dump_requests_sent_ = true;
  for (int peer = 0; peer < world_size; ++peer) {
    if (peer == world_rank) continue;
    auto message = std::make_unique<int64_t[]>(2);
    message[0] = reason;
    message[1] = world_rank;
    MPI_Request send;
    if (MPI_Isend(message.get(), 2, MPI_INT64_T, peer, kDumpTag, control_, &send) == MPI_SUCCESS)
      replies_.emplace_back(send, std::move(message));
  }
}

void MpiRuntime::run() {
  int idle_rounds = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      if (incoming_.empty() && posted_.empty() && waiting_.empty()) {
        if (stopping_) return;
        // Idle: still wake now and then to answer peers' timeout queries.
        wake_.wait_for(lock, std::chrono::milliseconds(5));
      }
      while (!incoming_.empty()) {
        waiting_.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
      }
    }
    if (failed_) {
      fail_all("");
      // Only control messages now (their own buffers): peers' dump requests, and ours.
      send_dump_requests();
      serve_control();
      std::unique_lock lock(mutex_);
      if (stopping_) return;
      wake_.wait_for(lock, std::chrono::milliseconds(5));
      continue;
    }
    const MpiClock::time_point now = MpiClock::now();
    bool progress = post_ready(now);
    progress |= test_posted(now);
    send_dump_requests();
    progress |= serve_control();
    // Back off while operations are open but nothing moves, so ranks that share cores with
    // their computing peers do not steal them.
    if (progress) {
      idle_rounds = 0;
    } else if (posted_.empty() && !waiting_.empty()) {
      // Only operations that are not due yet (LOOM_FAULT delay) are open: sleep until the first
      // is due instead of polling, so an emulated link latency costs the ranks no compute time.
      MpiClock::time_point first_due = MpiClock::time_point::max();
      for (const auto& op : waiting_) first_due = std::min(first_due, op->due);
      std::unique_lock lock(mutex_);
      wake_.wait_until(lock, std::min(first_due, now + std::chrono::milliseconds(5)),
                       [&] { return !incoming_.empty(); });
      idle_rounds = 0;
    } else if (!posted_.empty() || !waiting_.empty()) {
      ++idle_rounds;
      if (idle_rounds < 64)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(std::min(idle_rounds - 63, 100)));
    }
  }
}

// Posts waiting operations in issue order within each group: an operation waits while an
// earlier one of its group is unposted, delayed (fault injection) or still posting chunks.
bool MpiRuntime::post_ready(MpiClock::time_point now) {
  bool progress = false;
  std::vector<const GroupState*>& held = held_;  // reused: this runs on every poll
  held.clear();
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    PendingOp& op = **it;
    GroupState* group = op.group;
    if (group->unfinished || op.due > now ||
        std::find(held.begin(), held.end(), group) != held.end()) {
      held.push_back(group);
      ++it;
      continue;
    }
    std::unique_ptr<PendingOp> owned = std::move(*it);
    it = waiting_.erase(it);
    owned->posted_at = now;
    try {
      owned->stages[0](&owned->request);
    } catch (const CommError& e) {
      const std::string error =
          std::string(e.what()) + " (" + owned->what + " on group " + group->name + ")";
      record_finish(*owned, FlightState::kFailed);
      owned->work->complete(error);
      fail_all(error);
      return true;
    }
    if (options.flight && owned->flight_id) flight_start(*options.flight, *owned->flight_id);
    ++group->posted;
    if (owned->stages.size() > 1) group->unfinished = owned.get();
    posted_.push_back(std::move(owned));
    progress = true;
  }
  return progress;
}

void MpiRuntime::fail_all(const std::string& why) {
  std::lock_guard lock(mutex_);
  failed_ = true;
  if (first_failure_.empty()) first_failure_ = why;
  // Every open operation reports the first failure: whichever the caller waits on first says
  // what went wrong.
  const std::string error = "not completed because an earlier operation failed: " + first_failure_;
  auto fail = [&](auto& ops) {
    for (auto& op : ops) {  // posted ones' MPI requests are abandoned
      record_finish(*op, FlightState::kFailed);
      op->work->complete(error);
    }
  };
  fail(posted_);
  fail(waiting_);
  fail(incoming_);
  posted_.clear();
  waiting_.clear();
  incoming_.clear();
}

bool MpiRuntime::test_posted(MpiClock::time_point now) {
  bool progress = false;
  for (auto it = posted_.begin(); it != posted_.end();) {
    PendingOp& op = **it;
    int done = 0;
    const int code = MPI_Test(&op.request, &done, MPI_STATUS_IGNORE);
    std::string error;
    bool timed_out = false;
    if (code != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING];
      int length = 0;
      MPI_Error_string(code, text, &length);
      error = op.what + " on group " + op.group->name + " failed: " + std::string(text, length);
      done = 1;
    } else if (!done) {
      const double waited = std::chrono::duration<double>(now - op.posted_at).count();
      if (waited > options.timeout_s) {
        error = diagnose(op, waited);
        done = 1;
        timed_out = true;
        request_flight_dumps(kDumpTimeout);
      }
    }
    if (done && error.empty() && op.stage + 1 < op.stages.size()) {
      try {
        op.stages[++op.stage](&op.request);
        if (op.stage + 1 == op.stages.size()) op.group->unfinished = nullptr;
        progress = true;
        done = 0;
      } catch (const CommError& e) {
        error = std::string(e.what()) + " (" + op.what + " on group " + op.group->name + ")";
      }
    }
    if (!done) {
      ++it;
      continue;
    }
    if (!error.empty()) {
      record_finish(op, timed_out ? FlightState::kTimedOut : FlightState::kFailed);
      op.work->complete(error);
      posted_.erase(it);
      fail_all(error);
      return true;
    }
    if (op.finish) op.finish();
    record_finish(op, FlightState::kCompleted);
    op.work->complete("");
    it = posted_.erase(it);
    progress = true;
  }
  return progress;
}

// Answers peers' "how far are you on group g?" queries.
bool MpiRuntime::serve_control() {
  bool progress = false;
  for (;;) {
    int arrived = 0;
    MPI_Status status;
    MPI_Test(&query_request_, &arrived, &status);
    if (!arrived) break;
    progress = true;
    auto reply = std::make_unique<int64_t[]>(2);
    reply[0] = query_in_[0];
    reply[1] = -1;
    {
      std::lock_guard lock(mutex_);  // the caller's thread may be adding a group
      for (const GroupState& g : groups_)
        if (g.id == query_in_[0]) reply[1] = g.posted;
    }
    MPI_Request request;
    MPI_Isend(reply.get(), 2, MPI_INT64_T, status.MPI_SOURCE, kReplyTag, control_, &request);
    replies_.emplace_back(request, std::move(reply));
    MPI_Irecv(query_in_, 2, MPI_INT64_T, MPI_ANY_SOURCE, kQueryTag, control_, &query_request_);
  }
  for (int arrived = 0;;) {
    MPI_Test(&dump_request_, &arrived, MPI_STATUS_IGNORE);
    if (!arrived) break;
    progress = true;
    if (options.flight)
      flight_request_dump(
          *options.flight,
          "asked by rank " + std::to_string(dump_in_[1]) +
              (dump_in_[0] == kDumpTimeout ? " (its collective timed out)" : " (it failed)"));
    MPI_Irecv(dump_in_, 2, MPI_INT64_T, MPI_ANY_SOURCE, kDumpTag, control_, &dump_request_);
  }
  for (auto it = replies_.begin(); it != replies_.end();) {
    int done = 0;
    MPI_Test(&it->first, &done, MPI_STATUS_IGNORE);
    it = done ? replies_.erase(it) : std::next(it);
  }
  return progress;
}

// "global rank R", and its node when the job spans several.
std::string MpiRuntime::rank_name(int rank) const {
  std::string name = "global rank " + std::to_string(rank);
  for (const std::string& host : host_names)
    if (host != host_names.front()) return name + " on " + host_names[rank];
  return name;
}

// An operation timed out: ask the group's members how many operations they have posted on it,
// and name those that had not reached this one.
std::string MpiRuntime::diagnose(const PendingOp& op, double waited_s) {
  std::ostringstream out;
  out.precision(3);
  out << "timeout: " << op.what << " (operation #" << op.index << " on group " << op.group->name
      << ", global ranks";
  for (int r : op.group->global_ranks) out << ' ' << r;
  out << ") did not complete within " << waited_s << " s (parallel.collective_timeout_s = "
      << options.timeout_s << ") on " << rank_name(world_rank) << "; ";
  if (!op.collective) {
    out << "waiting for " << rank_name(op.group->global_ranks[op.peer]);
    return out.str();
  }
  const int n = static_cast<int>(op.group->global_ranks.size());
  std::vector<std::unique_ptr<int64_t[]>> answers;
  std::vector<MPI_Request> recvs(n, MPI_REQUEST_NULL);
  for (int i = 0; i < n; ++i) {
    const int peer = op.group->global_ranks[i];
    answers.push_back(std::make_unique<int64_t[]>(2));
    answers.back()[1] = -2;
    if (peer == world_rank) continue;
    // The query's buffer lives with its request in replies_ until the send completes.
    auto query = std::make_unique<int64_t[]>(2);
    query[0] = op.group->id;
    query[1] = op.index;
    MPI_Request send;
    MPI_Isend(query.get(), 2, MPI_INT64_T, peer, kQueryTag, control_, &send);
    replies_.emplace_back(send, std::move(query));
    MPI_Irecv(answers.back().get(), 2, MPI_INT64_T, peer, kReplyTag, control_, &recvs[i]);
  }
  const MpiClock::time_point deadline = MpiClock::now() + std::chrono::seconds(5);
  for (int pending = n; pending > 0 && MpiClock::now() < deadline;) {
    pending = 0;
    for (int i = 0; i < n; ++i) {
      int done = 1;
      if (recvs[i] != MPI_REQUEST_NULL) MPI_Test(&recvs[i], &done, MPI_STATUS_IGNORE);
      pending += !done;
    }
    serve_control();  // the others are asking us too
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::vector<std::string> behind;
  for (int i = 0; i < n; ++i) {
    const int peer = op.group->global_ranks[i];
    if (peer == world_rank) continue;
    const int64_t posted = answers[i][1];
    if (posted == -2)
      behind.push_back(rank_name(peer) + " (did not answer: hung, dead or unreachable)");
    else if (posted <= op.index)
      behind.push_back(rank_name(peer) + " (has posted only " +
                       std::to_string(posted) + " operations on this group)");
  }
  for (int i = 0; i < n; ++i) {
    if (recvs[i] != MPI_REQUEST_NULL) {
      int done = 0;
      MPI_Test(&recvs[i], &done, MPI_STATUS_IGNORE);
      if (!done) {
        MPI_Cancel(&recvs[i]);
        MPI_Wait(&recvs[i], MPI_STATUS_IGNORE);
      }
    }
  }
  if (behind.empty()) {
    out << "every member had reached it: the transport itself is stuck";
  } else {
    out << "waiting for ";
    for (size_t i = 0; i < behind.size(); ++i) out << (i ? ", " : "") << behind[i];
  }
  return out.str();
}

bool FaultInjection::applies_to(int global_rank, const std::string& group_name, long index) const {
  return action != Action::kNone && (rank == kEveryRank || rank == global_rank) &&
         group == group_name && (op == kEveryOp || op == index);
}

FaultInjection parse_fault_injection(const std::string& spec) {
  FaultInjection f;
  if (spec.empty()) return f;
  std::istringstream in(spec);
  std::string item;
  bool has_rank = false, has_action = false;
  while (std::getline(in, item, ',')) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    auto bad = [&] {
      return Error(
          "LOOM_FAULT \"" + spec + "\": bad item \"" + item +
          "\"; expected rank=R|*,group=G,op=K|*,action=delay|fail|kill|hang|skip|swap[,seconds=S] "
          "(* = every rank or every operation)");
    };
    // The whole value must be the number: "rank=1x" or "op=3.5" is a typo, not rank 1 or op 3.
    // Negative numbers are typos too (and -1 would read as "every").
    auto whole = [&](auto parse) {
      size_t used = 0;
      const auto number = parse(value, &used);
      if (used != value.size() || !(number >= 0)) throw bad();
      return number;
    };
    try {
      if (key == "rank") {
        f.rank = value == "*"
                     ? FaultInjection::kEveryRank
                     : whole([](const std::string& v, size_t* used) { return std::stoi(v, used); });
        has_rank = true;
      } else if (key == "group") {
        f.group = value;
      } else if (key == "op") {
        f.op = value == "*"
                   ? FaultInjection::kEveryOp
                   : whole([](const std::string& v, size_t* used) { return std::stol(v, used); });
      } else if (key == "seconds") {
        f.seconds = whole([](const std::string& v, size_t* used) { return std::stod(v, used); });
        if (!std::isfinite(f.seconds)) throw bad();
      } else if (key == "action") {
        has_action = true;
        if (value == "delay") f.action = FaultInjection::Action::kDelay;
        else if (value == "fail") f.action = FaultInjection::Action::kFail;
        else if (value == "kill") f.action = FaultInjection::Action::kKill;
        else if (value == "hang")
          f.action = FaultInjection::Action::kHang;
        else if (value == "skip")
          f.action = FaultInjection::Action::kSkip;
        else if (value == "swap")
          f.action = FaultInjection::Action::kSwap;
        else throw bad();
      } else {
        throw bad();
      }
    } catch (const std::logic_error&) {
      throw bad();
    }
  }
  const bool once = f.action == FaultInjection::Action::kHang ||
                    f.action == FaultInjection::Action::kSkip ||
                    f.action == FaultInjection::Action::kSwap;
  if (once && f.op == FaultInjection::kEveryOp)
    throw Error("LOOM_FAULT \"" + spec +
                "\": action=hang, skip and swap act on one operation; "
                "give op=K, not op=*");
  if (!has_rank || !has_action || f.group.empty())
    throw Error("LOOM_FAULT \"" + spec +
                "\" needs rank=, group= and action= (syntax: "
                "rank=R|*,group=G,op=K|*,action=delay|fail|kill|hang|skip|swap[,seconds=S])");
  return f;
}

std::unique_ptr<MpiRuntime> mpi_runtime_init(const MpiRuntimeOptions& options) {
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(options));
}

void mpi_runtime_destroy(MpiRuntime* runtime) { delete runtime; }

int mpi_world_rank(const MpiRuntime& runtime) { return runtime.world_rank; }
int mpi_world_size(const MpiRuntime& runtime) { return runtime.world_size; }
int mpi_local_size(const MpiRuntime& runtime) { return runtime.local_size; }
const std::vector<std::string>& mpi_host_names(const MpiRuntime& runtime) {
  return runtime.host_names;
}

std::chrono::system_clock::time_point mpi_request_flight_dumps(MpiRuntime& runtime) {
  return runtime.request_flight_dumps(kDumpError);
}

void mpi_abort(MpiRuntime& runtime, int code) { runtime.abort_job(code); }

}  // namespace loom