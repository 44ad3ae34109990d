#include "parallel/mpi_runtime.h"

#include <mpi.h>
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "core/error.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

// Every MPI call goes through this: a failure names the call and where it was made.
void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw CommError(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  std::string(text, length));
}
#define MPI_CHECK(call) mpi_check((call), #call, __FILE__, __LINE__)

MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kByte: return MPI_BYTE;
  }
  LOOM_CHECK(false);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM; }

int mpi_count(size_t count) {
  if (count > static_cast<size_t>(INT32_MAX))
    throw CommError("a message of " + std::to_string(count) +
                    " elements exceeds MPI's int count; use smaller buckets");
  return static_cast<int>(count);
}

// kAvg: MPI sums, the division happens on completion.
void divide(void* data, size_t count, DataType type, int by) {
  if (type == DataType::kFloat32) {
    float* p = static_cast<float*>(data);
    const float inv = 1.0f / static_cast<float>(by);
    for (size_t i = 0; i < count; ++i) p[i] *= inv;
  } else if (type == DataType::kFloat64) {
    double* p = static_cast<double*>(data);
    for (size_t i = 0; i < count; ++i) p[i] /= by;
  } else {
    LOOM_CHECK(false);  // averaging integers is rejected when the operation is issued
  }
}

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

// libnbc's MPI_Iallreduce slows down on large buffers (Open MPI 4.1, 2 ranks on one node: 0.9 GB/s
// at 64 MB) where a sequence of 2 MB all-reduces runs at 3.7 GB/s, close to the blocking
// MPI_Allreduce; so large all-reduces run as consecutive chunks of this size.
constexpr size_t kAllReduceChunkBytes = size_t{2} << 20;

// Control messages between progress threads: "how many operations have you posted on group g?"
constexpr int kQueryTag = 1, kReplyTag = 2;

}  // namespace

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
  Clock::time_point due;         // fault injection: not posted before
  Clock::time_point posted_at;
  MPI_Request request = MPI_REQUEST_NULL;
};

struct GroupState {
  int id = 0;
  std::string name;
  MPI_Comm comm = MPI_COMM_NULL;
  std::vector<int> global_ranks;
  long issued = 0;  // operations issued by the caller (assigns PendingOp::index)
  long posted = 0;  // operations handed to MPI (what peers are told on a timeout query)
};

class MpiRuntime {
 public:
  explicit MpiRuntime(const MpiRuntimeOptions& options);
  ~MpiRuntime();

  int world_rank = 0, world_size = 1, local_size = 1;
  MpiRuntimeOptions options;

  GroupState* add_group(const std::string& name, MPI_Comm comm);
  void enqueue(std::unique_ptr<PendingOp> op);
  [[noreturn]] void abort_job(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  void run();
  bool post_ready(Clock::time_point now);
  bool test_posted(Clock::time_point now);
  bool serve_control();
  std::string diagnose(const PendingOp& op, double waited_s);

  MPI_Comm control_ = MPI_COMM_NULL;  // a duplicate of the world for control messages
  std::list<GroupState> groups_;      // stable addresses
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<PendingOp>> incoming_;  // guarded by mutex_
  bool stopping_ = false;                            // guarded by mutex_
  // Progress thread only:
  std::deque<std::unique_ptr<PendingOp>> waiting_;   // issued, not yet posted (order kept)
  // A posted operation with stages still to post: later operations wait for it, so every rank
  // hands its collectives to MPI in the same order.
  const PendingOp* unfinished_ = nullptr;
  std::list<std::unique_ptr<PendingOp>> posted_;
  int64_t query_in_[2] = {0, 0};
  MPI_Request query_request_ = MPI_REQUEST_NULL;
  std::list<std::pair<MPI_Request, std::unique_ptr<int64_t[]>>> replies_;
  std::thread thread_;
};

MpiRuntime::MpiRuntime(const MpiRuntimeOptions& opts) : options(opts) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) throw Error("MPI was already initialised in this process");
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
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &control_));
  MPI_CHECK(MPI_Irecv(query_in_, 2, MPI_INT64_T, MPI_ANY_SOURCE, kQueryTag, control_,
                      &query_request_));
  thread_ = std::thread([this] { run(); });
}

MpiRuntime::~MpiRuntime() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  // Peers may still query us while they finish: keep answering until everybody is here.
  MPI_Request barrier;
  MPI_Ibarrier(control_, &barrier);
  for (int done = 0; !done;) {
    MPI_Test(&barrier, &done, MPI_STATUS_IGNORE);
    serve_control();
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  MPI_Cancel(&query_request_);
  MPI_Wait(&query_request_, MPI_STATUS_IGNORE);
  for (auto& [request, buffer] : replies_) MPI_Wait(&request, MPI_STATUS_IGNORE);
  for (GroupState& g : groups_)
    if (g.comm != MPI_COMM_WORLD) MPI_Comm_free(&g.comm);
  MPI_Comm_free(&control_);
  MPI_Finalize();
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
  std::lock_guard lock(mutex_);
  groups_.push_back(std::move(g));
  return &groups_.back();
}

void MpiRuntime::enqueue(std::unique_ptr<PendingOp> op) {
  const FaultInjection& f = options.fault;
  op->due = Clock::now();
  {
    std::lock_guard lock(mutex_);
    op->index = op->group->issued++;
    if (f.action != FaultInjection::Action::kNone && f.rank == world_rank &&
        f.group == op->group->name && f.op == op->index) {
      if (f.action == FaultInjection::Action::kKill) raise(SIGKILL);
      if (f.action == FaultInjection::Action::kFail) {
        op->work->complete("injected failure of " + op->what + " #" + std::to_string(op->index) +
                           " on group " + op->group->name + " (LOOM_FAULT)");
        return;
      }
      op->due += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(f.seconds));
    }
    incoming_.push_back(std::move(op));
  }
  wake_.notify_all();
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
    const Clock::time_point now = Clock::now();
    bool progress = post_ready(now);
    progress |= test_posted(now);
    progress |= serve_control();
    // Back off while operations are open but nothing moves, so ranks that share cores with
    // their computing peers do not steal them.
    if (progress) {
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

// Posts waiting operations in issue order; a delayed one (fault injection) holds back the rest.
bool MpiRuntime::post_ready(Clock::time_point now) {
  bool progress = false;
  while (!unfinished_ && !waiting_.empty() && waiting_.front()->due <= now) {
    std::unique_ptr<PendingOp> op = std::move(waiting_.front());
    waiting_.pop_front();
    op->posted_at = now;
    try {
      op->stages[0](&op->request);
    } catch (const CommError& e) {
      op->work->complete(std::string(e.what()) + " (" + op->what + " on group " + op->group->name + ")");
      continue;
    }
    ++op->group->posted;
    if (op->stages.size() > 1) unfinished_ = op.get();
    posted_.push_back(std::move(op));
    progress = true;
  }
  return progress;
}

bool MpiRuntime::test_posted(Clock::time_point now) {
  bool progress = false;
  for (auto it = posted_.begin(); it != posted_.end();) {
    PendingOp& op = **it;
    int done = 0;
    const int code = MPI_Test(&op.request, &done, MPI_STATUS_IGNORE);
    std::string error;
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
      }
    }
    if (done && error.empty() && op.stage + 1 < op.stages.size()) {
      try {
        op.stages[++op.stage](&op.request);
        if (op.stage + 1 == op.stages.size()) unfinished_ = nullptr;
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
    if (&op == unfinished_) unfinished_ = nullptr;  // failed midway
    if (error.empty() && op.finish) op.finish();
    op.work->complete(error);
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
  for (auto it = replies_.begin(); it != replies_.end();) {
    int done = 0;
    MPI_Test(&it->first, &done, MPI_STATUS_IGNORE);
    it = done ? replies_.erase(it) : std::next(it);
  }
  return progress;
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
      << options.timeout_s << ") on global rank " << world_rank << "; ";
  if (!op.collective) {
    out << "waiting for global rank " << op.group->global_ranks[op.peer];
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
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(5);
  for (int pending = n; pending > 0 && Clock::now() < deadline;) {
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
      behind.push_back("global rank " + std::to_string(peer) + " (did not answer: hung or dead)");
    else if (posted <= op.index)
      behind.push_back("global rank " + std::to_string(peer) + " (has posted only " +
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

namespace {

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator(MpiRuntime& runtime, GroupState* group) : runtime_(runtime), group_(group) {
    MPI_CHECK(MPI_Comm_rank(group->comm, &rank_));
    MPI_CHECK(MPI_Comm_size(group->comm, &size_));
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return group_->name; }
  const std::vector<int>& global_ranks() const override { return group_->global_ranks; }

  WorkPtr all_reduce_async(void* data, size_t count, DataType type, ReduceOp op) override {
    check_reduction(type, op);
    auto p = make_op("all_reduce", count, type, op);
    MPI_Comm comm = group_->comm;
    const size_t bytes = data_type_size(type), chunk = kAllReduceChunkBytes / bytes;
    for (size_t begin = 0; begin == 0 || begin < count; begin += chunk) {
      char* piece = static_cast<char*>(data) + begin * bytes;
      const int n = mpi_count(std::min(chunk, count - begin));
      p->stages.push_back([=](MPI_Request* r) {
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, piece, n, mpi_type(type), mpi_op(op), comm, r));
      });
    }
    if (op == ReduceOp::kAvg) p->finish = [=, size = size_] { divide(data, count, type, size); };
    return submit(std::move(p));
  }

  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) override {
    check_reduction(type, op);
    auto p = make_op("reduce_scatter", count, type, op);
    for (int r = 0; r < size_; ++r) p->counts.push_back(mpi_count(shard_range(count, size_, r).size()));
    const int* counts = p->counts.data();
    const size_t mine = shard_range(count, size_, rank_).size();
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) {
      MPI_CHECK(MPI_Ireduce_scatter(in, out, counts, mpi_type(type), mpi_op(op), comm, r));
    });
    if (op == ReduceOp::kAvg) p->finish = [=, size = size_] { divide(out, mine, type, size); };
    return submit(std::move(p));
  }

  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    auto p = make_op("all_gather", count, type, std::nullopt);
    for (int r = 0; r < size_; ++r) {
      const ShardRange s = shard_range(count, size_, r);
      p->counts.push_back(mpi_count(s.size()));
      p->displacements.push_back(mpi_count(s.begin));
    }
    const int* counts = p->counts.data();
    const int* displacements = p->displacements.data();
    const size_t bytes = data_type_size(type);
    const ShardRange own = shard_range(count, size_, rank_);
    const bool in_place = shard == static_cast<const char*>(out) + own.begin * bytes;
    const int own_count = mpi_count(own.size());
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) {
      MPI_CHECK(MPI_Iallgatherv(in_place ? MPI_IN_PLACE : shard, own_count, mpi_type(type), out,
                                counts, displacements, mpi_type(type), comm, r));
    });
    return submit(std::move(p));
  }

  WorkPtr broadcast_async(void* data, size_t count, DataType type, int root) override {
    LOOM_CHECK(root >= 0 && root < size_);
    auto p = make_op("broadcast", count, type, std::nullopt);
    const int n = mpi_count(count);
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) { MPI_CHECK(MPI_Ibcast(data, n, mpi_type(type), root, comm, r)); });
    return submit(std::move(p));
  }

  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    return point_to_point("send", const_cast<void*>(data), count, type, peer, true);
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    return point_to_point("recv", data, count, type, peer, false);
  }

  WorkPtr barrier_async() override {
    auto p = make_op("barrier", 0, DataType::kByte, std::nullopt);
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) { MPI_CHECK(MPI_Ibarrier(comm, r)); });
    return submit(std::move(p));
  }

 private:
  void check_reduction(DataType type, ReduceOp op) {
    LOOM_CHECK(type != DataType::kByte);
    LOOM_CHECK(op != ReduceOp::kAvg || type == DataType::kFloat32 || type == DataType::kFloat64);
  }

  std::unique_ptr<PendingOp> make_op(const char* name, size_t count, DataType type,
                                     std::optional<ReduceOp> op) {
    auto p = std::make_unique<PendingOp>();
    p->work = std::make_shared<MpiWork>();
    p->group = group_;
    static const char* kTypeNames[] = {"float32", "float64", "int64", "bytes"};
    p->what = std::string(name) + " of " + std::to_string(count) + " " +
              kTypeNames[static_cast<int>(type)] + (op ? std::string(" (") + reduce_op_name(*op) + ")" : "");
    return p;
  }

  WorkPtr point_to_point(const char* name, void* data, size_t count, DataType type, int peer,
                         bool send) {
    LOOM_CHECK(peer >= 0 && peer < size_ && peer != rank_);
    auto p = make_op(name, count, type, std::nullopt);
    p->what += std::string(send ? " to" : " from") + " group rank " + std::to_string(peer);
    p->collective = false;
    p->peer = peer;
    const int n = mpi_count(count);
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) {
      if (send)
        MPI_CHECK(MPI_Isend(data, n, mpi_type(type), peer, 0, comm, r));
      else
        MPI_CHECK(MPI_Irecv(data, n, mpi_type(type), peer, 0, comm, r));
    });
    return submit(std::move(p));
  }

  WorkPtr submit(std::unique_ptr<PendingOp> p) {
    WorkPtr work = p->work;
    runtime_.enqueue(std::move(p));
    return work;
  }

  MpiRuntime& runtime_;
  GroupState* group_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

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
      return Error("LOOM_FAULT \"" + spec + "\": bad item \"" + item +
                   "\"; expected rank=R,group=G,op=K,action=delay|fail|kill[,seconds=S]");
    };
    // The whole value must be the number: "rank=1x" or "op=3.5" is a typo, not rank 1 or op 3.
    auto whole = [&](auto parse) {
      size_t used = 0;
      const auto number = parse(value, &used);
      if (used != value.size()) throw bad();
      return number;
    };
    try {
      if (key == "rank") {
        f.rank = whole([](const std::string& v, size_t* used) { return std::stoi(v, used); });
        has_rank = true;
      } else if (key == "group") {
        f.group = value;
      } else if (key == "op") {
        f.op = whole([](const std::string& v, size_t* used) { return std::stol(v, used); });
      } else if (key == "seconds") {
        f.seconds = whole([](const std::string& v, size_t* used) { return std::stod(v, used); });
      } else if (key == "action") {
        has_action = true;
        if (value == "delay") f.action = FaultInjection::Action::kDelay;
        else if (value == "fail") f.action = FaultInjection::Action::kFail;
        else if (value == "kill") f.action = FaultInjection::Action::kKill;
        else throw bad();
      } else {
        throw bad();
      }
    } catch (const std::logic_error&) {
      throw bad();
    }
  }
  if (!has_rank || !has_action || f.group.empty())
    throw Error("LOOM_FAULT \"" + spec + "\" needs rank=, group= and action=");
  return f;
}

std::unique_ptr<MpiRuntime> mpi_runtime_init(const MpiRuntimeOptions& options) {
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(options));
}

void mpi_runtime_destroy(MpiRuntime* runtime) { delete runtime; }

int mpi_world_rank(const MpiRuntime& runtime) { return runtime.world_rank; }
int mpi_world_size(const MpiRuntime& runtime) { return runtime.world_size; }
int mpi_local_size(const MpiRuntime& runtime) { return runtime.local_size; }

std::unique_ptr<Communicator> mpi_world(MpiRuntime& runtime) {
  MPI_Comm comm;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  return std::make_unique<MpiCommunicator>(runtime, runtime.add_group("world", comm));
}

std::unique_ptr<Communicator> mpi_split(MpiRuntime& runtime, const std::string& name, int color,
                                        int key) {
  MPI_Comm comm;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm));
  return std::make_unique<MpiCommunicator>(runtime, runtime.add_group(name, comm));
}

void mpi_abort(MpiRuntime& runtime, int code) { runtime.abort_job(code); }

}  // namespace loom
