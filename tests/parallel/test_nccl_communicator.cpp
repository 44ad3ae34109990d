// The NCCL communicator against host references, under mpirun -np 2 (CUDA builds). Every rank
// needs its own GPU (NCCL rejects two ranks on one device): the group is the first
// min(ranks, devices) ranks. With no CUDA device anywhere the program prints
// "skipped: no CUDA device" and passes.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "parallel/flight_recorder.h"
#include "parallel/mpi_runtime.h"
#include "parallel/nccl_communicator.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

Communicator* g_nccl = nullptr;      // null on ranks outside the tested group
FlightRecorder* g_flight = nullptr;  // what g_nccl records into

// Device memory holding a copy of a host vector.
template <typename T>
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<T>& host) : size_(host.size()) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<size_t>(1, size_) * sizeof(T)) != cudaSuccess) std::abort();
    memory_.reset(p);
    cudaMemcpy(p, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  T* data() { return static_cast<T*>(memory_.get()); }
  std::vector<T> host() const {
    std::vector<T> out(size_);
    cudaMemcpy(out.data(), memory_.get(), size_ * sizeof(T), cudaMemcpyDeviceToHost);
    return out;
  }

 private:
  struct Free {
    void operator()(void* p) const { cudaFree(p); }
  };
  size_t size_;
  std::unique_ptr<void, Free> memory_;
};

std::vector<size_t> sizes(int p) {
  return {0,
          1,
          static_cast<size_t>(p - 1),
          static_cast<size_t>(p + 1),
          static_cast<size_t>(2 * p + 3),
          4099,
          (size_t{1} << 20) + 3,
          size_t{1} << 20};
}

template <typename T>
std::vector<T> reduced(ReduceOp op, int p, int salt, size_t begin, size_t end) {
  std::vector<T> out(end - begin);
  for (size_t i = begin; i < end; ++i) {
    double acc = op == ReduceOp::kMax ? -1e300 : 0;
    for (int r = 0; r < p; ++r)
      acc = op == ReduceOp::kMax ? std::max(acc, input_value(r, i, salt))
                                 : acc + input_value(r, i, salt);
    out[i - begin] = static_cast<T>(op == ReduceOp::kAvg ? acc / p : acc);
  }
  return out;
}

template <typename T>
DataType type_of() {
  return sizeof(T) == 4 ? DataType::kFloat32 : DataType::kFloat64;
}

template <typename T>
void all_reduce_case(Communicator& c, ReduceOp op, size_t n, bool on_stream) {
  DeviceVector<T> data(input_vector<T>(c.rank(), n, 1));
  WorkPtr w = c.all_reduce_async(data.data(), n, type_of<T>(), op);
  std::vector<T> got;
  if (on_stream) {  // consume through a stream ordered after the work, not a host wait
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    nccl_work_wait_on_stream(w, stream);
    got.resize(n);
    cudaMemcpyAsync(got.data(), data.data(), n * sizeof(T), cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
    EXPECT_TRUE(w->is_completed());
  } else {
    w->wait();
    got = data.host();
  }
  EXPECT_TRUE(same_values(got, reduced<T>(op, c.size(), 1, 0, n),
                          describe("nccl all_reduce", c, n) + " " + reduce_op_name(op),
                          op == ReduceOp::kAvg ? 1e-6 : 0));
}

TEST(Nccl, AllReduce) {
  if (!g_nccl) return;
  for (size_t n : sizes(g_nccl->size()))
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
      all_reduce_case<float>(*g_nccl, op, n, false);
      all_reduce_case<double>(*g_nccl, op, n, true);
    }
}

TEST(Nccl, ReduceScatterAndAllGather) {
  if (!g_nccl) return;
  Communicator& c = *g_nccl;
  for (size_t n : sizes(c.size())) {
    const ShardRange own = shard_range(n, c.size(), c.rank());
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
      DeviceVector<float> in(input_vector<float>(c.rank(), n, 2));
      DeviceVector<float> out(std::vector<float>(own.size(), -999.0f));
      c.reduce_scatter_async(in.data(), out.data(), n, DataType::kFloat32, op)->wait();
      EXPECT_TRUE(same_values(out.host(), reduced<float>(op, c.size(), 2, own.begin, own.end),
                              describe("nccl reduce_scatter", c, n) + " " + reduce_op_name(op),
                              op == ReduceOp::kAvg ? 1e-6 : 0));
    }
    std::vector<float> expected(n), mine;
    for (int r = 0; r < c.size(); ++r) {
      const ShardRange s = shard_range(n, c.size(), r);
      for (size_t i = s.begin; i < s.end; ++i)
        expected[i] = static_cast<float>(input_value(r, i, 3));
    }
    for (size_t i = own.begin; i < own.end; ++i) mine.push_back(expected[i]);
    DeviceVector<float> shard(mine), out(std::vector<float>(n, -999.0f));
    c.all_gather_async(shard.data(), out.data(), n, DataType::kFloat32)->wait();
    EXPECT_TRUE(same_values(out.host(), expected, describe("nccl all_gather", c, n)));
    std::vector<float> partial(n, -999.0f);
    std::copy(mine.begin(), mine.end(), partial.begin() + own.begin);
    DeviceVector<float> in_place(partial);
    c.all_gather_async(in_place.data() + own.begin, in_place.data(), n, DataType::kFloat32)->wait();
    EXPECT_TRUE(same_values(in_place.host(), expected, describe("nccl all_gather in place", c, n)));
  }
}

TEST(Nccl, AllToAll) {
  if (!g_nccl) return;
  Communicator& c = *g_nccl;
  const size_t p = static_cast<size_t>(c.size());
  for (size_t n : sizes(c.size())) {
    std::vector<float> expected(n * p);
    for (size_t r = 0; r < p; ++r)
      for (size_t i = 0; i < n; ++i)
        expected[r * n + i] =
            static_cast<float>(input_value(static_cast<int>(r), c.rank() * n + i, 7));
    DeviceVector<float> in(input_vector<float>(c.rank(), n * p, 7));
    DeviceVector<float> out(std::vector<float>(n * p, -999.0f));
    c.all_to_all_async(in.data(), out.data(), n, DataType::kFloat32)->wait();
    EXPECT_TRUE(same_values(out.host(), expected, describe("nccl all_to_all", c, n)));
  }
}

TEST(Nccl, BroadcastSendRecvBarrier) {
  if (!g_nccl) return;
  Communicator& c = *g_nccl;
  const int p = c.size(), root = p - 1;
  for (size_t n : sizes(p)) {
    DeviceVector<double> data(c.rank() == root ? input_vector<double>(root, n, 4)
                                               : std::vector<double>(n, -999.0));
    c.broadcast(data.data(), n, DataType::kFloat64, root);
    EXPECT_TRUE(same_values(data.host(), input_vector<double>(root, n, 4),
                            describe("nccl broadcast", c, n)));
    if (p < 2) continue;
    const int next = (c.rank() + 1) % p, prev = (c.rank() + p - 1) % p;
    DeviceVector<float> out(input_vector<float>(c.rank(), n, 5)), in(std::vector<float>(n, -1));
    WorkPtr recv = c.recv_async(in.data(), n, DataType::kFloat32, prev);   // recv first: must not
    WorkPtr send = c.send_async(out.data(), n, DataType::kFloat32, next);  // deadlock (batched)
    recv->wait();
    send->wait();
    EXPECT_TRUE(same_values(in.host(), input_vector<float>(prev, n, 5),
                            describe("nccl send/recv ring", c, n)));
  }
  c.barrier();
}

TEST(Nccl, ManyInFlightWaitedInReverse) {
  if (!g_nccl) return;
  Communicator& c = *g_nccl;
  std::vector<std::unique_ptr<DeviceVector<float>>> buffers;
  std::vector<WorkPtr> works;
  for (int k = 0; k < 16; ++k) {
    buffers.push_back(
        std::make_unique<DeviceVector<float>>(input_vector<float>(c.rank(), 1000 + k, k)));
    works.push_back(
        c.all_reduce_async(buffers.back()->data(), 1000 + k, DataType::kFloat32, ReduceOp::kSum));
  }
  for (int k = 15; k >= 0; --k) works[k]->wait();
  for (int k = 0; k < 16; ++k)
    EXPECT_TRUE(same_values(buffers[k]->host(),
                            reduced<float>(ReduceOp::kSum, c.size(), k, 0, 1000 + k),
                            "in flight #" + std::to_string(k)));
}

// The communicator records each operation (group "nccl_test.nccl"): collectives numbered in
// order and completed once waited on, send/recv counted by peer.
TEST(Nccl, FlightRecorderSeesEveryOperation) {
  if (!g_nccl) return;
  Communicator& c = *g_nccl;
  auto group_state = [] {
    std::lock_guard lock(g_flight->mutex);
    for (const FlightGroup& g : g_flight->groups)
      if (g.name == "nccl_test.nccl") return g;
    return FlightGroup{};
  };
  const FlightGroup before = group_state();
  ASSERT_EQ(before.ranks, c.global_ranks());
  DeviceVector<float> data(input_vector<float>(c.rank(), 64));
  c.all_reduce_async(data.data(), 64, DataType::kFloat32, ReduceOp::kSum)->wait();
  const int p = c.size();
  if (p > 1) {
    DeviceVector<float> in(std::vector<float>(8, 0)), out(input_vector<float>(c.rank(), 8));
    WorkPtr recv = c.recv_async(in.data(), 8, DataType::kFloat32, (c.rank() + p - 1) % p);
    WorkPtr send = c.send_async(out.data(), 8, DataType::kFloat32, (c.rank() + 1) % p);
    recv->wait();
    send->wait();
  }
  c.barrier();
  const FlightGroup after = group_state();
  EXPECT_EQ(after.collectives - before.collectives, 2);
  EXPECT_EQ(after.completed - before.completed, 2);
  EXPECT_EQ(after.operations - before.operations, p > 1 ? 4 : 2);
  if (p > 1) {
    EXPECT_EQ(after.sent[(c.rank() + 1) % p] - before.sent[(c.rank() + 1) % p], 1);
  }
  std::lock_guard lock(g_flight->mutex);
  const FlightEntry& last = g_flight->ring[(g_flight->next_id - 1) % g_flight->ring.size()];
  EXPECT_EQ(last.info.op, FlightOp::kBarrier);
  EXPECT_EQ(last.seq, after.collectives - 1);
  EXPECT_EQ(last.state, FlightState::kCompleted);
  EXPECT_LE(last.issued, last.started);
  EXPECT_LE(last.started, last.finished);
}

}  // namespace
}  // namespace loom::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<loom::MpiRuntime> mpi = loom::mpi_runtime_init({.timeout_s = 120, .fault = {}});
  std::unique_ptr<loom::Communicator> world = loom::mpi_world(*mpi);
  const int rank = world->rank(), devices = loom::cuda_device_count();
  double none = devices == 0;
  world->all_reduce(&none, 1, loom::ReduceOp::kMax);
  if (none) {
    if (rank == 0) std::printf("skipped: no CUDA device\n");
    return 0;
  }
  // NCCL wants one device per rank: test over the first min(ranks, devices) ranks.
  const bool member = rank < devices;
  std::unique_ptr<loom::Communicator> group =
      loom::mpi_split(*mpi, "nccl_test", member ? 0 : 1, rank);
  if (rank == 0 && devices < world->size())
    std::printf("note: %d CUDA devices for %d ranks; testing NCCL over the first %d ranks\n",
                devices, world->size(), devices);
  loom::FlightRecorder flight(1024);
  loom::NcclOptions options;
  options.device = rank;
  options.flight = &flight;
  std::unique_ptr<loom::Communicator> nccl;
  if (member) nccl = loom::nccl_communicator_create(*group, options);
  loom::test::g_nccl = nccl.get();
  loom::test::g_flight = &flight;
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  double failed = RUN_ALL_TESTS() != 0;
  nccl.reset();
  world->all_reduce(&failed, 1, loom::ReduceOp::kMax);
  return failed ? 1 : 0;
}
