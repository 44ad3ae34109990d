// The MPI Communicator: each operation becomes a PendingOp that the runtime's progress thread
// posts as non-blocking MPI calls.
#include <algorithm>
#include <optional>

#include "base/error.h"
#include "kernels/cpu/bf16.h"
#include "parallel/mpi_internal.h"

namespace loom {
namespace {

MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::kFloat32: return MPI_FLOAT;
    case DataType::kFloat64: return MPI_DOUBLE;
    case DataType::kInt64: return MPI_INT64_T;
    case DataType::kByte: return MPI_BYTE;
    case DataType::kBfloat16: return MPI_UINT16_T;
  }
  LOOM_CHECK(false);
}

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
  } else if (type == DataType::kBfloat16) {  // the bf16 sum, divided in fp32, rounded once more
    uint16_t* p = static_cast<uint16_t*>(data);
    const float inv = 1.0f / static_cast<float>(by);
    for (size_t i = 0; i < count; ++i)
      p[i] = kernels::cpu::bf16_from_float(kernels::cpu::bf16_to_float(p[i]) * inv);
  } else {
    LOOM_CHECK(false);  // averaging integers is rejected when the operation is issued
  }
}

// libnbc's MPI_Iallreduce slows down on large buffers (Open MPI 4.1, 2 ranks on one node: 0.9 GB/s
// at 64 MB) where a sequence of 2 MB all-reduces runs at 3.7 GB/s, close to the blocking
// MPI_Allreduce; so large all-reduces run as consecutive chunks of this size.
constexpr size_t kAllReduceChunkBytes = size_t{2} << 20;

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
    auto p = make_op(FlightOp::kAllReduce, count, type, op);
    MPI_Comm comm = group_->comm;
    const MPI_Op mpi_op = runtime_.reduce_op(op, type);
    const size_t bytes = data_type_size(type), chunk = kAllReduceChunkBytes / bytes;
    for (size_t begin = 0; begin == 0 || begin < count; begin += chunk) {
      char* piece = static_cast<char*>(data) + begin * bytes;
      const int n = mpi_count(std::min(chunk, count - begin));
      p->stages.push_back([=](MPI_Request* r) {
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, piece, n, mpi_type(type), mpi_op, comm, r));
      });
    }
    if (op == ReduceOp::kAvg) p->finish = [=, size = size_] { divide(data, count, type, size); };
    return submit(std::move(p));
  }

  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) override {
    check_reduction(type, op);
    auto p = make_op(FlightOp::kReduceScatter, count, type, op);
    for (int r = 0; r < size_; ++r) p->counts.push_back(mpi_count(shard_range(count, size_, r).size()));
    const int* counts = p->counts.data();
    const size_t mine = shard_range(count, size_, rank_).size();
    MPI_Comm comm = group_->comm;
    const MPI_Op mpi_op = runtime_.reduce_op(op, type);
    p->stages.emplace_back([=](MPI_Request* r) {
      MPI_CHECK(MPI_Ireduce_scatter(in, out, counts, mpi_type(type), mpi_op, comm, r));
    });
    if (op == ReduceOp::kAvg) p->finish = [=, size = size_] { divide(out, mine, type, size); };
    return submit(std::move(p));
  }

  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    auto p = make_op(FlightOp::kAllGather, count, type, std::nullopt);
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
    auto p = make_op(FlightOp::kBroadcast, count, type, std::nullopt);
    p->flight.peer = root;
    const int n = mpi_count(count);
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) { MPI_CHECK(MPI_Ibcast(data, n, mpi_type(type), root, comm, r)); });
    return submit(std::move(p));
  }

  WorkPtr all_to_all_async(const void* in, void* out, size_t count, DataType type) override {
    auto p = make_op(FlightOp::kAllToAll, count, type, std::nullopt);
    const int n = mpi_count(count);
    mpi_count(count * static_cast<size_t>(size_));  // the whole buffer is addressed with an int
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) {
      MPI_CHECK(MPI_Ialltoall(in, n, mpi_type(type), out, n, mpi_type(type), comm, r));
    });
    return submit(std::move(p));
  }

  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    return point_to_point(FlightOp::kSend, const_cast<void*>(data), count, type, peer);
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    return point_to_point(FlightOp::kRecv, data, count, type, peer);
  }

  WorkPtr barrier_async() override {
    auto p = make_op(FlightOp::kBarrier, 0, DataType::kByte, std::nullopt);
    MPI_Comm comm = group_->comm;
    p->stages.emplace_back([=](MPI_Request* r) { MPI_CHECK(MPI_Ibarrier(comm, r)); });
    return submit(std::move(p));
  }

 private:
  void check_reduction(DataType type, ReduceOp op) {
    LOOM_CHECK(type != DataType::kByte);
    LOOM_CHECK(op != ReduceOp::kAvg || type == DataType::kFloat32 || type == DataType::kFloat64 ||
               type == DataType::kBfloat16);
  }

  std::unique_ptr<PendingOp> make_op(FlightOp kind, size_t count, DataType type,
                                     std::optional<ReduceOp> op) {
    auto p = std::make_unique<PendingOp>();
    p->work = std::make_shared<MpiWork>();
    p->group = group_;
    p->what = std::string(flight_op_name(kind)) + " of " + std::to_string(count) + " " +
              data_type_name(type) +
              (op ? std::string(" (") + reduce_op_name(*op) + ")" : "");
    p->flight = {.op = kind, .type = type, .count = count, .reduce = op};
    return p;
  }

  WorkPtr point_to_point(FlightOp kind, void* data, size_t count, DataType type, int peer) {
    LOOM_CHECK(peer >= 0 && peer < size_ && peer != rank_);
    const bool send = kind == FlightOp::kSend;
    auto p = make_op(kind, count, type, std::nullopt);
    p->flight.peer = peer;
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

std::unique_ptr<Communicator> mpi_world(MpiRuntime& runtime, const std::string& name) {
  MPI_Comm comm;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  return std::make_unique<MpiCommunicator>(runtime, runtime.add_group(name, comm));
}

std::unique_ptr<Communicator> mpi_split(MpiRuntime& runtime, const std::string& name, int color,
                                        int key) {
  MPI_Comm comm;
  MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm));
  return std::make_unique<MpiCommunicator>(runtime, runtime.add_group(name, comm));
}

}  // namespace loom
