// Every collective of the MPI communicator, blocking and async, against references each rank
// computes locally (every rank can compute every rank's input), on the world and on sub-groups,
// for sizes 0, 1, p − 1, sizes that p does not divide, and (on the world) about a million.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <thread>

#include "kernels/cpu/bf16.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

std::vector<size_t> sizes_for(const Communicator& comm) {
  const size_t p = static_cast<size_t>(comm.size());
  std::vector<size_t> sizes = {0, 1, p - 1, p + 1, 2 * p + 3, 8 * p, 1000 + p / 2 + 1, 4099};
  if (&comm == context().world) sizes.push_back((size_t{1} << 20) + 3);  // ~1M, odd
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

template <typename T>
DataType data_type_of();
template <>
DataType data_type_of<float>() {
  return DataType::kFloat32;
}
template <>
DataType data_type_of<double>() {
  return DataType::kFloat64;
}

// op over every group rank's input_vector(r, ·, salt), elements [begin, end).
template <typename T>
std::vector<T> reference(ReduceOp op, int p, int salt, size_t begin, size_t end) {
  std::vector<double> acc(end - begin, op == ReduceOp::kMax ? -1e300 : 0.0);
  for (int r = 0; r < p; ++r)
    for (size_t i = begin; i < end; ++i) {
      const double v = input_value(r, i, salt);
      acc[i - begin] = op == ReduceOp::kMax ? std::max(acc[i - begin], v) : acc[i - begin] + v;
    }
  std::vector<T> out(acc.size());
  for (size_t i = 0; i < acc.size(); ++i)
    out[i] = static_cast<T>(op == ReduceOp::kAvg ? acc[i] / p : acc[i]);
  return out;
}

// kAvg divides by p after summing, so the result may differ from the reference in the last bit.
double tolerance(ReduceOp op) { return op == ReduceOp::kAvg ? 1e-6 : 0.0; }

template <typename T>
void all_reduce_case(Communicator& comm, ReduceOp op, size_t n, bool async) {
  const int salt = static_cast<int>(n % 13) + static_cast<int>(op);
  std::vector<T> data = input_vector<T>(comm.rank(), n, salt);
  const std::string what = describe("all_reduce", comm, n) + " " + reduce_op_name(op) +
                           (async ? " async " : " blocking ") + (sizeof(T) == 4 ? "f32" : "f64");
  try {
    if (async) {
      WorkPtr work = comm.all_reduce_async(data.data(), n, data_type_of<T>(), op);
      work->wait();
      EXPECT_TRUE(work->is_completed()) << what;
      work->wait();  // idempotent
    } else {
      comm.all_reduce(data.data(), n, op);
    }
  } catch (const CommError& e) {
    ADD_FAILURE() << what << ": " << e.what();
  }
  EXPECT_TRUE(same_values(data, reference<T>(op, comm.size(), salt, 0, n), what, tolerance(op)));
}

TEST(Collectives, AllReduce) {
  for (Communicator* comm : communicators())
    for (size_t n : sizes_for(*comm))
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax})
        for (bool async : {false, true}) {
          all_reduce_case<float>(*comm, op, n, async);
          all_reduce_case<double>(*comm, op, n, async);
        }
}

template <typename T>
void reduce_scatter_case(Communicator& comm, ReduceOp op, size_t n, bool async) {
  const int salt = static_cast<int>(n % 7) + 3;
  const std::vector<T> in = input_vector<T>(comm.rank(), n, salt);
  const ShardRange own = shard_range(n, comm.size(), comm.rank());
  std::vector<T> out(own.size(), static_cast<T>(-999));
  const std::string what = describe("reduce_scatter", comm, n) + " " + reduce_op_name(op) +
                           (async ? " async " : " blocking ") + (sizeof(T) == 4 ? "f32" : "f64");
  try {
    if (async || sizeof(T) != sizeof(float)) {
      WorkPtr work = comm.reduce_scatter_async(in.data(), out.data(), n, data_type_of<T>(), op);
      while (!work->is_completed()) std::this_thread::yield();
      work->wait();
    } else {
      comm.reduce_scatter(reinterpret_cast<const float*>(in.data()),
                          reinterpret_cast<float*>(out.data()), n, op);
    }
  } catch (const CommError& e) {
    ADD_FAILURE() << what << ": " << e.what();
  }
  EXPECT_TRUE(same_values(out, reference<T>(op, comm.size(), salt, own.begin, own.end), what,
                          tolerance(op)));
  EXPECT_TRUE(same_values(in, input_vector<T>(comm.rank(), n, salt), what + " (input intact)"));
}

// bf16 (activations of a bf16 run): MPI has no such type, so sums and maxima are loom's own
// operations. Small integers keep every partial sum exact in bf16's 8-bit mantissa, so the
// result is exact whatever order MPI combines the ranks in; a send carries the bits unchanged.
TEST(Collectives, Bfloat16AllReduceAndSend) {
  auto value = [](int rank, size_t i) { return static_cast<float>((rank * 37 + i * 11) % 15) - 7; };
  for (Communicator* comm : communicators())
    for (size_t n : sizes_for(*comm))
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
        std::vector<uint16_t> data(n);
        for (size_t i = 0; i < n; ++i) data[i] = kernels::cpu::bf16_from_float(value(comm->rank(), i));
        comm->all_reduce_async(data.data(), n, DataType::kBfloat16, op)->wait();
        size_t wrong = 0;
        for (size_t i = 0; i < n; ++i) {
          float want = op == ReduceOp::kMax ? -1e30f : 0.0f;
          for (int r = 0; r < comm->size(); ++r)
            want = op == ReduceOp::kMax ? std::max(want, value(r, i)) : want + value(r, i);
          wrong += kernels::cpu::bf16_to_float(data[i]) != want;
        }
        EXPECT_EQ(wrong, 0u) << describe("bf16 all_reduce", *comm, n) << " " << reduce_op_name(op);
      }
  Communicator& world = *context().world;
  if (world.size() < 2) return;
  const int next = (world.rank() + 1) % world.size(), prev = (world.rank() + world.size() - 1) % world.size();
  std::vector<uint16_t> out(1001), in(1001);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint16_t>(world.rank() * 977 + i);
  WorkPtr receiving = world.recv_async(in.data(), in.size(), DataType::kBfloat16, prev);
  world.send_async(out.data(), out.size(), DataType::kBfloat16, next)->wait();
  receiving->wait();
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(in[i], static_cast<uint16_t>(prev * 977 + i));
}

TEST(Collectives, ReduceScatter) {
  for (Communicator* comm : communicators())
    for (size_t n : sizes_for(*comm))
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax})
        for (bool async : {false, true}) {
          reduce_scatter_case<float>(*comm, op, n, async);
          if (async) reduce_scatter_case<double>(*comm, op, n, async);
        }
}

template <typename T>
void all_gather_case(Communicator& comm, size_t n, bool async, bool in_place) {
  const int p = comm.size(), salt = 4;
  const ShardRange own = shard_range(n, p, comm.rank());
  std::vector<T> out(n, static_cast<T>(-999)), shard(own.size());
  for (size_t j = 0; j < own.size(); ++j) {
    shard[j] = static_cast<T>(input_value(comm.rank(), own.begin + j, salt));
    if (in_place) out[own.begin + j] = shard[j];
  }
  const T* source = in_place ? out.data() + own.begin : shard.data();
  std::vector<T> expected(n);
  for (int r = 0; r < p; ++r) {
    const ShardRange s = shard_range(n, p, r);
    for (size_t i = s.begin; i < s.end; ++i) expected[i] = static_cast<T>(input_value(r, i, salt));
  }
  const std::string what = describe("all_gather", comm, n) + (async ? " async" : " blocking") +
                           (in_place ? " in place " : " ") + (sizeof(T) == 4 ? "f32" : "f64");
  try {
    if (async || sizeof(T) != sizeof(float))
      comm.all_gather_async(source, out.data(), n, data_type_of<T>())->wait();
    else
      comm.all_gather(reinterpret_cast<const float*>(source), reinterpret_cast<float*>(out.data()),
                      n);
  } catch (const CommError& e) {
    ADD_FAILURE() << what << ": " << e.what();
  }
  EXPECT_TRUE(same_values(out, expected, what));
}

TEST(Collectives, AllGather) {
  for (Communicator* comm : communicators())
    for (size_t n : sizes_for(*comm))
      for (bool async : {false, true})
        for (bool in_place : {false, true}) {
          all_gather_case<float>(*comm, n, async, in_place);
          if (async) all_gather_case<double>(*comm, n, async, in_place);
        }
}

// Block j of rank r's input is input_value(r, j · n + i); rank r receives block r of everyone.
template <typename T>
void all_to_all_case(Communicator& comm, size_t n) {
  const int p = comm.size(), salt = 6;
  std::vector<T> in(n * p), out(n * p, static_cast<T>(-999)), expected(n * p);
  for (size_t i = 0; i < n * p; ++i) in[i] = static_cast<T>(input_value(comm.rank(), i, salt));
  for (int r = 0; r < p; ++r)
    for (size_t i = 0; i < n; ++i)
      expected[r * n + i] = static_cast<T>(input_value(r, comm.rank() * n + i, salt));
  const std::string what = describe("all_to_all", comm, n) + (sizeof(T) == 4 ? " f32" : " f64");
  try {
    comm.all_to_all_async(in.data(), out.data(), n, data_type_of<T>())->wait();
  } catch (const CommError& e) {
    ADD_FAILURE() << what << ": " << e.what();
  }
  EXPECT_TRUE(same_values(out, expected, what));
}

TEST(Collectives, AllToAll) {
  for (Communicator* comm : communicators())
    for (size_t n : sizes_for(*comm)) {
      if (n > 4099) continue;  // n blocks per rank: the largest size would be p × 8 MiB
      all_to_all_case<float>(*comm, n);
      all_to_all_case<double>(*comm, n);
    }
}

TEST(Collectives, BroadcastFromNonZeroRoot) {
  for (Communicator* comm : communicators()) {
    const int p = comm->size();
    for (int root : {p - 1, p / 2})
      for (size_t n : sizes_for(*comm))
        for (bool async : {false, true}) {
          const std::string what = describe("broadcast", *comm, n) + " from root " +
                                   std::to_string(root) + (async ? " async" : " blocking");
          std::vector<double> data = comm->rank() == root ? input_vector<double>(root, n, 5)
                                                          : std::vector<double>(n, -999.0);
          std::vector<uint8_t> bytes(n, 0);
          if (comm->rank() == root)
            for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + root);
          try {
            if (async) {
              WorkPtr a = comm->broadcast_async(data.data(), n, DataType::kFloat64, root);
              WorkPtr b = comm->broadcast_async(bytes.data(), n, DataType::kByte, root);
              b->wait();
              a->wait();
            } else {
              comm->broadcast(data.data(), n, DataType::kFloat64, root);
              comm->broadcast(bytes.data(), n, DataType::kByte, root);
            }
          } catch (const CommError& e) {
            ADD_FAILURE() << what << ": " << e.what();
          }
          EXPECT_TRUE(same_values(data, input_vector<double>(root, n, 5), what));
          std::vector<uint8_t> expected(n);
          for (size_t i = 0; i < n; ++i) expected[i] = static_cast<uint8_t>(i * 7 + root);
          EXPECT_EQ(bytes, expected) << what << " (bytes)";
        }
  }
}

TEST(Collectives, SendRecvRing) {
  for (Communicator* comm : communicators()) {
    const int p = comm->size(), r = comm->rank();
    if (p < 2) continue;  // same decision on every member of the group
    const int next = (r + 1) % p, prev = (r + p - 1) % p;
    for (size_t n : sizes_for(*comm))
      for (bool async : {false, true}) {
        const std::string what = describe("send/recv ring", *comm, n) + (async ? " async" : "");
        const std::vector<float> out = input_vector<float>(r, n, 6);
        std::vector<float> in(n, -999.0f);
        try {
          if (async) {
            WorkPtr recv = comm->recv_async(in.data(), n, DataType::kFloat32, prev);
            WorkPtr send = comm->send_async(out.data(), n, DataType::kFloat32, next);
            recv->wait();
            send->wait();
          } else if (r == 0) {  // a chain, so blocking sends of any size cannot deadlock
            comm->send(out.data(), n, DataType::kFloat32, next);
            comm->recv(in.data(), n, DataType::kFloat32, prev);
          } else {
            comm->recv(in.data(), n, DataType::kFloat32, prev);
            comm->send(out.data(), n, DataType::kFloat32, next);
          }
        } catch (const CommError& e) {
          ADD_FAILURE() << what << ": " << e.what();
        }
        EXPECT_TRUE(same_values(in, input_vector<float>(prev, n, 6), what));
      }
  }
}

// A barrier releases nobody before the last member arrives: the last rank arrives 0.3 s late.
TEST(Collectives, BarrierWaitsForTheLastRank) {
  using Clock = std::chrono::steady_clock;
  for (Communicator* comm : communicators())
    for (bool async : {false, true}) {
      comm->barrier();
      const auto start = Clock::now();
      if (comm->rank() == comm->size() - 1)
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
      try {
        if (async) {
          WorkPtr w = comm->barrier_async();
          w->wait();
          EXPECT_TRUE(w->is_completed());
        } else {
          comm->barrier();
        }
      } catch (const CommError& e) {
        ADD_FAILURE() << comm->name() << " barrier: " << e.what();
      }
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      // 0.3 s minus how far apart the members left the previous barrier (well under 0.1 s).
      EXPECT_GE(s, 0.2) << comm->name() << " barrier released rank " << comm->rank()
                        << " before the last member arrived";
    }
}

TEST(Collectives, GroupsHaveTheMeshShape) {
  const ProcessGroups& g = *context().groups;
  EXPECT_EQ(g.world->size(), g.mesh.world_size());
  EXPECT_EQ(g.tp->size(), g.mesh.tp);
  EXPECT_EQ(g.dp->size(), g.mesh.dp);
  EXPECT_EQ(g.pp->size(), 1);
  EXPECT_EQ(g.tp->rank(), g.coord.tp);
  EXPECT_EQ(g.dp->rank(), g.coord.dp);
  EXPECT_EQ(g.tp->global_ranks(), mesh_group(g.mesh, g.rank, Axis::kTensor));
  EXPECT_EQ(g.dp->global_ranks(), mesh_group(g.mesh, g.rank, Axis::kData));
  EXPECT_EQ(g.world->global_ranks()[g.world->rank()], g.rank);
  EXPECT_EQ(g.tp->name(), "tp");
}

}  // namespace
}  // namespace loom::test
