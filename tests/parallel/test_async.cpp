// Async behaviour of the MPI communicator: many operations in flight on several groups, waited
// in a different order on every rank; progress without wait() while the caller computes; ranks
// that arrive late (slept, or held back by fault injection).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <thread>

#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct InFlight {
  WorkPtr work;
  std::function<void()> check;  // EXPECTs on the result once the work completed
};

TEST(Async, ManyInFlightCompletedOutOfOrder) {
  std::vector<InFlight> ops;
  std::vector<std::unique_ptr<std::vector<float>>> buffers;  // stable until every wait
  auto buffer = [&](std::vector<float> v) {
    buffers.push_back(std::make_unique<std::vector<float>>(std::move(v)));
    return buffers.back().get();
  };
  int salt = 0;
  for (int round = 0; round < 4; ++round)
    for (Communicator* comm : communicators()) {
      const int p = comm->size(), r = comm->rank();
      for (size_t n : {size_t{0}, size_t{3}, static_cast<size_t>(1000 + round), size_t{65537}}) {
        ++salt;
        std::vector<float>* data = buffer(input_vector<float>(r, n, salt));
        std::vector<float> sum(n, 0.0f);
        for (int q = 0; q < p; ++q)
          for (size_t i = 0; i < n; ++i) sum[i] += static_cast<float>(input_value(q, i, salt));
        const std::string what = describe("in-flight all_reduce", *comm, n);
        ops.push_back({comm->all_reduce_async(data->data(), n, DataType::kFloat32, ReduceOp::kSum),
                       [=] { EXPECT_TRUE(same_values(*data, sum, what)); }});

        const ShardRange own = shard_range(n, p, r);
        std::vector<float>* shard = buffer(std::vector<float>(own.size(), -1.0f));
        std::vector<float>* in = buffer(input_vector<float>(r, n, salt));
        const std::vector<float> expected(sum.begin() + own.begin, sum.begin() + own.end);
        ops.push_back({comm->reduce_scatter_async(in->data(), shard->data(), n, DataType::kFloat32,
                                                  ReduceOp::kSum),
                       [=] { EXPECT_TRUE(same_values(*shard, expected, what + " rs")); }});

        std::vector<float>* gathered = buffer(std::vector<float>(n, -1.0f));
        std::vector<float>* mine = buffer({});
        for (size_t i = own.begin; i < own.end; ++i) mine->push_back(static_cast<float>(i));
        std::vector<float> positions(n);
        for (size_t i = 0; i < n; ++i) positions[i] = static_cast<float>(i);
        ops.push_back(
            {comm->all_gather_async(mine->data(), gathered->data(), n, DataType::kFloat32),
             [=] { EXPECT_TRUE(same_values(*gathered, positions, what + " ag")); }});
      }
    }
  // Each rank waits in its own order; completion must not depend on the order of wait().
  std::vector<size_t> order(ops.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937 shuffle(static_cast<unsigned>(context().world->rank() * 7919 + 1));
  std::shuffle(order.begin(), order.end(), shuffle);
  for (size_t i : order) {
    try {
      ops[i].work->wait();
    } catch (const CommError& e) {
      ADD_FAILURE() << "operation " << i << ": " << e.what();
    }
  }
  for (InFlight& op : ops) {
    EXPECT_TRUE(op.work->is_completed());
    op.check();
  }
}

// The progress thread completes an operation while the caller computes and never calls wait().
TEST(Async, ProgressesWithoutWait) {
  Communicator& world = *context().world;
  const size_t n = size_t{4} << 20;  // 16 MB
  std::vector<float> data = input_vector<float>(world.rank(), n, 1);
  world.barrier();
  WorkPtr work = world.all_reduce_async(data.data(), n, DataType::kFloat32, ReduceOp::kSum);
  const auto start = Clock::now();
  double acc = 0;
  long chunks = 0;
  bool completed = false;
  while (seconds_since(start) < 30) {
    for (int k = 0; k < 20000; ++k) acc += std::sqrt(static_cast<double>(k + chunks));
    ++chunks;
    if ((completed = work->is_completed())) break;
  }
  EXPECT_TRUE(completed) << "the all-reduce did not complete within 30 s without wait()";
  EXPECT_GT(acc, 0);
  try {
    work->wait();
  } catch (const CommError& e) {
    ADD_FAILURE() << e.what();
  }
  std::vector<float> expected(n, 0.0f);
  for (int r = 0; r < world.size(); ++r)
    for (size_t i = 0; i < n; ++i) expected[i] += static_cast<float>(input_value(r, i, 1));
  EXPECT_TRUE(same_values(data, expected, "all_reduce progressed without wait"));
}

// The last rank arrives 0.3 s after the others; everybody still gets the right data.
TEST(Async, SlowRankStillCorrect) {
  for (Communicator* comm : communicators()) {
    const size_t n = 100003;
    std::vector<double> data = input_vector<double>(comm->rank(), n, 2);
    if (comm->rank() == comm->size() - 1)
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    WorkPtr work = comm->all_reduce_async(data.data(), n, DataType::kFloat64, ReduceOp::kMax);
    try {
      work->wait();
    } catch (const CommError& e) {
      ADD_FAILURE() << e.what();
    }
    std::vector<double> expected(n, -1e300);
    for (int r = 0; r < comm->size(); ++r)
      for (size_t i = 0; i < n; ++i) expected[i] = std::max(expected[i], input_value(r, i, 2));
    EXPECT_TRUE(same_values(data, expected, describe("late-rank all_reduce max", *comm, n)));
  }
}

// LOOM_FAULT (set in main): global rank 1 posts operation #2 on "delayed" 0.5 s late. The
// others' Work stays incomplete meanwhile, then completes with the right data.
TEST(Async, DelayedRankInjected) {
  Communicator& delayed = *context().delayed;
  const int p = delayed.size();
  const size_t n = 1001;
  for (int op = 0; op < 3; ++op) {
    std::vector<float> data = input_vector<float>(delayed.rank(), n, op);
    const auto start = Clock::now();
    WorkPtr work = delayed.all_reduce_async(data.data(), n, DataType::kFloat32, ReduceOp::kSum);
    const bool done_at_once = work->is_completed();
    try {
      work->wait();
    } catch (const CommError& e) {
      ADD_FAILURE() << e.what();
    }
    const double waited = seconds_since(start);
    if (op == 2 && p > 1) {
      EXPECT_FALSE(done_at_once) << "complete while global rank 1 had not posted it";
      EXPECT_GE(waited, 0.35) << "operation #2 did not wait for the delayed rank";
    }
    std::vector<float> expected(n, 0.0f);
    for (int r = 0; r < p; ++r)
      for (size_t i = 0; i < n; ++i) expected[i] += static_cast<float>(input_value(r, i, op));
    EXPECT_TRUE(same_values(data, expected, "delayed op #" + std::to_string(op)));
  }
}

}  // namespace
}  // namespace loom::test
