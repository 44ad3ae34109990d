#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "parallel/flight_recorder.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

// Every CUDA and NCCL call goes through these: a failure names the call, where it was made and
// what it was for (the group and operation).
void cuda_check(cudaError_t code, const char* call, const char* file, int line,
                const std::string& context) {
  if (code == cudaSuccess) return;
  throw CommError(context + ": " + call + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cudaGetErrorName(code) + " (" + cudaGetErrorString(code) + ")");
}
void nccl_check(ncclResult_t code, ncclComm_t comm, const char* call, const char* file, int line,
                const std::string& context) {
  if (code == ncclSuccess) return;
  const char* last = ncclGetLastError(comm);
  throw CommError(context + ": " + call + " failed at " + file + ":" + std::to_string(line) + ": " +
                  ncclGetErrorString(code) + (last && *last ? std::string(" (") + last + ")" : ""));
}
#define LOOM_CUDA_CHECK(call, context) cuda_check((call), #call, __FILE__, __LINE__, (context))
#define LOOM_NCCL_CHECK(call, comm, context) \
  nccl_check((call), (comm), #call, __FILE__, __LINE__, (context))

// Owners of the C handles (STYLE 5): each is released exactly once.
struct StreamDeleter {
  void operator()(CUstream_st* s) const { cudaStreamDestroy(s); }
};
struct EventDeleter {
  void operator()(CUevent_st* e) const { cudaEventDestroy(e); }
};
struct DeviceMemoryDeleter {
  void operator()(void* p) const { cudaFree(p); }
};
struct NcclCommDeleter {
  void operator()(ncclComm* c) const { ncclCommDestroy(c); }
};
using StreamPtr = std::unique_ptr<CUstream_st, StreamDeleter>;
using EventPtr = std::unique_ptr<CUevent_st, EventDeleter>;
using DeviceMemory = std::unique_ptr<void, DeviceMemoryDeleter>;
using NcclCommPtr = std::unique_ptr<ncclComm, NcclCommDeleter>;

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kFloat64:
      return ncclFloat64;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kByte:
      return ncclUint8;
    case DataType::kBfloat16:
      return ncclBfloat16;
  }
  LOOM_CHECK(false);
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
  }
  LOOM_CHECK(false);
}

const char* type_name(DataType type) { return data_type_name(type); }

class NcclWorkImpl;

// One send or recv waiting to be handed to NCCL with its neighbours (see the header).
struct PendingPointToPoint {
  bool send = true;
  void* data = nullptr;
  size_t count = 0;
  DataType type = DataType::kFloat32;
  int peer = 0;
  std::shared_ptr<NcclWorkImpl> work;
};

// What the communicator and its Works share. Works hold it too (shared ownership) because a
// Work's wait() may have to flush pending send/recv or abort the communicator, and a Work may be
// waited on after the code that issued it has let go of the communicator.
struct NcclState {
  std::string name;
  std::vector<int> global_ranks;
  int rank = 0, size = 1, device = 0;
  double timeout_s = 300;
  cudaStream_t input_stream = nullptr;

  std::recursive_mutex mutex;  // guards everything below; flush() runs under it from wait()
  NcclCommPtr comm;            // null once aborted
  std::string abort_reason;
  StreamPtr stream;
  EventPtr input_ready;
  DeviceMemory staging, scratch;
  size_t staging_bytes = 0;
  long issued = 0;  // operations issued, for messages and the flight recorder's sequence
  std::vector<PendingPointToPoint> pending;
  FlightRecorder* flight = nullptr;  // optional
  int flight_group = -1;

  std::string context(const std::string& what) const {
    return what + " on NCCL group " + name + " (group rank " + std::to_string(rank) + " of " +
           std::to_string(size) + ", global rank " + std::to_string(global_ranks[rank]) + ")";
  }
  // After an error or a timeout nothing on this communicator can be trusted: abort it, which
  // also unblocks kernels waiting for peers.
  void abort(const std::string& reason) {
    std::lock_guard lock(mutex);
    if (!comm) return;
    abort_reason = reason;
    ncclCommAbort(comm.release());
    pending.clear();
  }
  void flush();
  void ensure_staging(size_t bytes, const std::string& what);

  ~NcclState() {
    if (!comm) return;
    // Let queued operations finish (bounded by the timeout) before NCCL is finalised.
    const Clock::time_point start = Clock::now();
    cudaSetDevice(device);
    while (cudaStreamQuery(stream.get()) == cudaErrorNotReady &&
           std::chrono::duration<double>(Clock::now() - start).count() < timeout_s)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (cudaStreamQuery(stream.get()) != cudaSuccess) {
      ncclCommAbort(comm.release());
      return;
    }
    ncclCommFinalize(comm.get());
  }
};

class NcclWorkImpl : public NcclWork {
 public:
  NcclWorkImpl(std::shared_ptr<NcclState> state, std::string what)
      : state_(std::move(state)), what_(std::move(what)), issued_at_(Clock::now()) {}

  // Called by the communicator once the operation is on the stream.
  void record() {
    cudaEvent_t event = nullptr;
    LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                    state_->context(what_));
    done_.reset(event);
    LOOM_CUDA_CHECK(cudaEventRecord(event, state_->stream.get()), state_->context(what_));
    if (state_->flight && flight_id_) flight_start(*state_->flight, *flight_id_);
  }
  void fail(std::string error) {
    finish_flight(error.empty() ? FlightState::kCompleted : FlightState::kFailed);
    finished_ = true;
    error_ = std::move(error);
  }
  // Records it as issued (operation `seq` of the group) in the state's flight recorder.
  void issue_flight(long seq, const FlightOpInfo& info) {
    if (state_->flight) flight_id_ = flight_issue(*state_->flight, state_->flight_group, seq, info);
  }

  bool is_completed() override {
    std::lock_guard lock(state_->mutex);
    if (finished_) return true;
    if (!done_) state_->flush();  // a send/recv still collected: hand it to NCCL now
    if (finished_) return true;
    if (!state_->comm) {
      fail(state_->context(what_) + ": the communicator was aborted: " + state_->abort_reason);
      return true;
    }
    const cudaError_t query = cudaEventQuery(done_.get());
    if (query == cudaSuccess) {
      finish_flight(FlightState::kCompleted);
      finished_ = true;
      return true;
    }
    if (query != cudaErrorNotReady) {
      fail(state_->context(what_) + ": cudaEventQuery: " + cudaGetErrorName(query) + " (" +
           cudaGetErrorString(query) + ")");
      state_->abort(error_);
      return true;
    }
    ncclResult_t async_error = ncclSuccess;
    const ncclResult_t got = ncclCommGetAsyncError(state_->comm.get(), &async_error);
    if (got != ncclSuccess || (async_error != ncclSuccess && async_error != ncclInProgress)) {
      const ncclResult_t code = got != ncclSuccess ? got : async_error;
      const char* last = ncclGetLastError(state_->comm.get());
      fail(state_->context(what_) + ": NCCL reported an asynchronous error: " +
           ncclGetErrorString(code) + (last && *last ? std::string(" (") + last + ")" : ""));
      state_->abort(error_);
      return true;
    }
    return false;
  }

  // Polls rather than cudaEventSynchronize, so a peer that never arrives turns into a timeout
  // (and an aborted communicator) instead of a hang.
  void wait() override {
    for (int round = 0; !is_completed(); ++round) {
      const double waited = std::chrono::duration<double>(Clock::now() - issued_at_).count();
      if (waited > state_->timeout_s) {
        std::ostringstream out;
        out.precision(3);
        out << "timeout: " << state_->context(what_) << " did not complete within " << waited
            << " s (parallel.collective_timeout_s = " << state_->timeout_s
            << "); a member of global ranks";
        for (int r : state_->global_ranks) out << ' ' << r;
        out << " has not reached it or is stuck; the NCCL communicator was aborted";
        std::lock_guard lock(state_->mutex);
        finish_flight(FlightState::kTimedOut);
        fail(out.str());
        state_->abort(error_);
        break;
      }
      if (round < 100)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(round < 1000 ? 20 : 200));
    }
    if (!error_.empty()) throw CommError(error_);
  }

  void wait_on_stream(void* stream) override {
    std::lock_guard lock(state_->mutex);
    if (!done_ && !finished_) state_->flush();
    if (!error_.empty()) throw CommError(error_);
    if (!done_) return;  // completed without GPU work (nothing to order after)
    LOOM_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), done_.get(), 0),
                    state_->context(what_));
  }

 private:
  void finish_flight(FlightState state) {
    if (state_->flight && flight_id_ && !finished_)
      flight_finish(*state_->flight, *flight_id_, state);
  }

  std::shared_ptr<NcclState> state_;
  std::string what_;
  std::optional<uint64_t> flight_id_;
  Clock::time_point issued_at_;
  EventPtr done_;  // recorded after the operation on the communication stream
  bool finished_ = false;
  std::string error_;
};

// Hands the collected send/recv calls to NCCL as one group; their Works complete together.
void NcclState::flush() {
  std::lock_guard lock(mutex);
  if (pending.empty()) return;
  std::vector<PendingPointToPoint> batch;
  batch.swap(pending);
  const std::string what = "send/recv batch of " + std::to_string(batch.size());
  try {
    if (!comm) throw CommError(context(what) + ": the communicator was aborted: " + abort_reason);
    LOOM_CUDA_CHECK(cudaSetDevice(device), context(what));
    LOOM_CUDA_CHECK(cudaEventRecord(input_ready.get(), input_stream), context(what));
    LOOM_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), input_ready.get(), 0), context(what));
    LOOM_NCCL_CHECK(ncclGroupStart(), comm.get(), context(what));
    for (const PendingPointToPoint& p : batch) {
      if (p.count == 0) continue;
      if (p.send)
        LOOM_NCCL_CHECK(
            ncclSend(p.data, p.count, nccl_type(p.type), p.peer, comm.get(), stream.get()),
            comm.get(), context(what));
      else
        LOOM_NCCL_CHECK(
            ncclRecv(p.data, p.count, nccl_type(p.type), p.peer, comm.get(), stream.get()),
            comm.get(), context(what));
    }
    LOOM_NCCL_CHECK(ncclGroupEnd(), comm.get(), context(what));
    for (PendingPointToPoint& p : batch) p.work->record();
  } catch (const CommError& e) {
    for (PendingPointToPoint& p : batch) p.work->fail(e.what());
    abort(e.what());
  }
}

void NcclState::ensure_staging(size_t bytes, const std::string& what) {
  if (bytes <= staging_bytes) return;
  // Queued operations may still read the old buffer.
  LOOM_CUDA_CHECK(cudaStreamSynchronize(stream.get()), context(what));
  const size_t grown = std::max(bytes, 2 * staging_bytes);
  staging.reset();
  staging_bytes = 0;
  void* memory = nullptr;
  LOOM_CUDA_CHECK(cudaMalloc(&memory, grown), context(what));
  staging.reset(memory);
  staging_bytes = grown;
}

class NcclCommunicator : public Communicator {
 public:
  explicit NcclCommunicator(std::shared_ptr<NcclState> state) : state_(std::move(state)) {}
  // Hands over collected send/recv (their Works hold the state, so they must not stay pending).
  ~NcclCommunicator() override { state_->flush(); }

  int rank() const override { return state_->rank; }
  int size() const override { return state_->size; }
  const std::string& name() const override { return state_->name; }
  const std::vector<int>& global_ranks() const override { return state_->global_ranks; }

  WorkPtr all_reduce_async(void* data, size_t count, DataType type, ReduceOp op) override {
    LOOM_CHECK(op != ReduceOp::kAvg || type == DataType::kFloat32 || type == DataType::kFloat64 ||
               type == DataType::kBfloat16);
    return enqueue(describe("all_reduce", count, type, reduce_op_name(op)),
                   {.op = FlightOp::kAllReduce, .type = type, .count = count, .reduce = op},
                   [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
                     LOOM_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(type), nccl_op(op),
                                                   comm, stream),
                                     comm, what);
                   });
  }

  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) override {
    LOOM_CHECK(op != ReduceOp::kAvg || type == DataType::kFloat32 || type == DataType::kFloat64 ||
               type == DataType::kBfloat16);
    return enqueue(
        describe("reduce_scatter", count, type, reduce_op_name(op)),
        {.op = FlightOp::kReduceScatter, .type = type, .count = count, .reduce = op},
        [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
          const size_t p = static_cast<size_t>(size()), chunk = (count + p - 1) / p;
          if (count % p == 0) {
            LOOM_NCCL_CHECK(
                ncclReduceScatter(in, out, chunk, nccl_type(type), nccl_op(op), comm, stream), comm,
                what);
            return;
          }
          // Padded: part r of the input at staging[r · chunk], the result at staging[p · chunk].
          const size_t bytes = data_type_size(type);
          state_->ensure_staging((p + 1) * chunk * bytes, what);
          char* staging = static_cast<char*>(state_->staging.get());
          const char* source = static_cast<const char*>(in);
          for (int r = 0; r < size(); ++r) {
            const ShardRange s = shard_range(count, size(), r);
            if (s.size() == 0) continue;
            LOOM_CUDA_CHECK(cudaMemcpyAsync(staging + r * chunk * bytes, source + s.begin * bytes,
                                            s.size() * bytes, cudaMemcpyDeviceToDevice, stream),
                            what);
          }
          char* result = staging + p * chunk * bytes;
          LOOM_NCCL_CHECK(
              ncclReduceScatter(staging, result, chunk, nccl_type(type), nccl_op(op), comm, stream),
              comm, what);
          const size_t mine = shard_range(count, size(), rank()).size();
          if (mine > 0)
            LOOM_CUDA_CHECK(
                cudaMemcpyAsync(out, result, mine * bytes, cudaMemcpyDeviceToDevice, stream), what);
        });
  }

  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    return enqueue(
        describe("all_gather", count, type, nullptr),
        {.op = FlightOp::kAllGather, .type = type, .count = count, .reduce = std::nullopt},
        [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
          const size_t p = static_cast<size_t>(size()), chunk = (count + p - 1) / p;
          if (count % p == 0) {  // in place too, when shard == out + rank · chunk
            LOOM_NCCL_CHECK(ncclAllGather(shard, out, chunk, nccl_type(type), comm, stream), comm,
                            what);
            return;
          }
          // Padded: this rank's part at staging[0], part r of the result at
          // staging[(1 + r) · chunk].
          const size_t bytes = data_type_size(type);
          state_->ensure_staging((p + 1) * chunk * bytes, what);
          char* staging = static_cast<char*>(state_->staging.get());
          const size_t mine = shard_range(count, size(), rank()).size();
          if (mine > 0)
            LOOM_CUDA_CHECK(
                cudaMemcpyAsync(staging, shard, mine * bytes, cudaMemcpyDeviceToDevice, stream),
                what);
          char* gathered = staging + chunk * bytes;
          LOOM_NCCL_CHECK(ncclAllGather(staging, gathered, chunk, nccl_type(type), comm, stream),
                          comm, what);
          char* target = static_cast<char*>(out);
          for (int r = 0; r < size(); ++r) {
            const ShardRange s = shard_range(count, size(), r);
            if (s.size() == 0) continue;
            LOOM_CUDA_CHECK(cudaMemcpyAsync(target + s.begin * bytes, gathered + r * chunk * bytes,
                                            s.size() * bytes, cudaMemcpyDeviceToDevice, stream),
                            what);
          }
        });
  }

  WorkPtr broadcast_async(void* data, size_t count, DataType type, int root) override {
    LOOM_CHECK(root >= 0 && root < size());
    return enqueue(describe("broadcast", count, type, nullptr),
                   {.op = FlightOp::kBroadcast,
                    .type = type,
                    .count = count,
                    .reduce = std::nullopt,
                    .peer = root},
                   [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
                     LOOM_NCCL_CHECK(
                         ncclBroadcast(data, data, count, nccl_type(type), root, comm, stream),
                         comm, what);
                   });
  }

  // NCCL's all-to-all: a send and a receive with every rank, grouped into one operation.
  WorkPtr all_to_all_async(const void* in, void* out, size_t count, DataType type) override {
    return enqueue(
        describe("all_to_all", count, type, nullptr),
        {.op = FlightOp::kAllToAll, .type = type, .count = count, .reduce = std::nullopt},
        [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
          const size_t block = count * data_type_size(type);
          LOOM_NCCL_CHECK(ncclGroupStart(), comm, what);
          for (int r = 0; r < size(); ++r) {
            LOOM_NCCL_CHECK(ncclSend(static_cast<const char*>(in) + r * block, count,
                                     nccl_type(type), r, comm, stream),
                            comm, what);
            LOOM_NCCL_CHECK(ncclRecv(static_cast<char*>(out) + r * block, count, nccl_type(type), r,
                                     comm, stream),
                            comm, what);
          }
          LOOM_NCCL_CHECK(ncclGroupEnd(), comm, what);
        });
  }

  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    return point_to_point(true, const_cast<void*>(data), count, type, peer);
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    return point_to_point(false, data, count, type, peer);
  }

  // NCCL has no barrier: an all-reduce of one float on a scratch word.
  WorkPtr barrier_async() override {
    return enqueue(
        "barrier",
        {.op = FlightOp::kBarrier, .type = DataType::kFloat32, .count = 1, .reduce = std::nullopt},
        [&](ncclComm_t comm, cudaStream_t stream, const std::string& what) {
          LOOM_NCCL_CHECK(ncclAllReduce(state_->scratch.get(), state_->scratch.get(), 1,
                                        ncclFloat32, ncclSum, comm, stream),
                          comm, what);
        });
  }

 private:
  std::string describe(const char* name, size_t count, DataType type, const char* op) {
    return std::string(name) + " of " + std::to_string(count) + " " + type_name(type) +
           (op ? std::string(" (") + op + ")" : "") + " #" + std::to_string(state_->issued);
  }

  using Body = std::function<void(ncclComm_t, cudaStream_t, const std::string&)>;

  // Puts one collective on the communication stream after the input stream's current work.
  // Errors while enqueueing are reported by the Work's wait(), as the MPI backend does.
  WorkPtr enqueue(const std::string& what, const FlightOpInfo& info, const Body& body) {
    const size_t count = info.count;
    std::lock_guard lock(state_->mutex);
    state_->flush();  // collected send/recv go first, in issue order
    auto work = std::make_shared<NcclWorkImpl>(state_, what);
    work->issue_flight(state_->issued++, info);
    const std::string context = state_->context(what);
    try {
      if (!state_->comm)
        throw CommError(context + ": the communicator was aborted: " + state_->abort_reason);
      if (count == 0) {  // every member skips it alike (same sizes on every rank)
        work->fail("");
        return work;
      }
      LOOM_CUDA_CHECK(cudaSetDevice(state_->device), context);
      LOOM_CUDA_CHECK(cudaEventRecord(state_->input_ready.get(), state_->input_stream), context);
      LOOM_CUDA_CHECK(cudaStreamWaitEvent(state_->stream.get(), state_->input_ready.get(), 0),
                      context);
      body(state_->comm.get(), state_->stream.get(), context);
      work->record();
    } catch (const CommError& e) {
      work->fail(e.what());
      state_->abort(e.what());
    }
    return work;
  }

  WorkPtr point_to_point(bool send, void* data, size_t count, DataType type, int peer) {
    LOOM_CHECK(peer >= 0 && peer < size() && peer != rank());
    std::lock_guard lock(state_->mutex);
    const std::string what = describe(send ? "send" : "recv", count, type, nullptr) +
                             (send ? " to" : " from") + " group rank " + std::to_string(peer);
    auto work = std::make_shared<NcclWorkImpl>(state_, what);
    work->issue_flight(state_->issued++, {.op = send ? FlightOp::kSend : FlightOp::kRecv,
                                          .type = type,
                                          .count = count,
                                          .reduce = std::nullopt,
                                          .peer = peer});
    if (!state_->comm) {
      work->fail(state_->context(what) + ": the communicator was aborted: " + state_->abort_reason);
      return work;
    }
    if (count == 0) {
      work->fail("");
      return work;
    }
    state_->pending.push_back({send, data, count, type, peer, work});
    return work;
  }

  std::shared_ptr<NcclState> state_;
};

}  // namespace

void nccl_work_wait_on_stream(const WorkPtr& work, void* stream) {
  auto* nccl = dynamic_cast<NcclWork*>(work.get());
  LOOM_CHECK(nccl != nullptr);
  nccl->wait_on_stream(stream);
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" state for later calls
    return 0;
  }
  return count;
}

std::unique_ptr<Communicator> nccl_communicator_create(Communicator& bootstrap,
                                                       const NcclOptions& options) {
  auto state = std::make_shared<NcclState>();
  state->name = bootstrap.name();
  state->global_ranks = bootstrap.global_ranks();
  state->rank = bootstrap.rank();
  state->size = bootstrap.size();
  state->timeout_s = options.timeout_s;
  state->flight = options.flight;
  if (state->flight)
    state->flight_group =
        flight_add_group(*state->flight, state->name + ".nccl", state->global_ranks);
  state->input_stream = static_cast<cudaStream_t>(options.input_stream);
  const std::string context = state->context("creating the NCCL communicator");

  // Every member says whether it can take part before anybody waits inside NCCL.
  std::string problem;
  const int devices = cuda_device_count();
  if (devices == 0) {
    problem = "no CUDA device is visible to this process";
  } else if (options.device >= devices) {
    problem = "device " + std::to_string(options.device) + " asked for, but only " +
              std::to_string(devices) + " are visible";
  } else {
    state->device = options.device;
    if (state->device < 0 && cudaGetDevice(&state->device) != cudaSuccess)
      problem = "cudaGetDevice failed";
    else if (cudaSetDevice(state->device) != cudaSuccess)
      problem = "cudaSetDevice(" + std::to_string(state->device) + ") failed";
  }
  double failed = problem.empty() ? 0 : 1;
  bootstrap.all_reduce(&failed, 1, ReduceOp::kMax);
  if (!problem.empty()) throw Error(context + ": " + problem);
  if (failed) throw Error(context + ": another member of the group has no usable CUDA device");

  // Group rank 0 makes the id; a failure there is broadcast instead of leaving the others waiting.
  struct {
    ncclUniqueId id;
    char ok;
  } hello{};
  if (state->rank == 0) hello.ok = ncclGetUniqueId(&hello.id) == ncclSuccess;
  bootstrap.broadcast(&hello, sizeof hello, DataType::kByte, 0);
  if (!hello.ok) throw CommError(context + ": ncclGetUniqueId failed on group rank 0");

  ncclComm_t comm = nullptr;
  LOOM_NCCL_CHECK(ncclCommInitRank(&comm, state->size, hello.id, state->rank), nullptr, context);
  state->comm.reset(comm);
  cudaStream_t stream = nullptr;
  LOOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), context);
  state->stream.reset(stream);
  cudaEvent_t event = nullptr;
  LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), context);
  state->input_ready.reset(event);
  void* scratch = nullptr;
  LOOM_CUDA_CHECK(cudaMalloc(&scratch, sizeof(float)), context);
  state->scratch.reset(scratch);
  if (options.staging_bytes > 0) state->ensure_staging(options.staging_bytes, context);
  return std::make_unique<NcclCommunicator>(std::move(state));
}

}  // namespace loom
