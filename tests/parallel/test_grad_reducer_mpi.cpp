// GradReducer over real groups: with and without ZeRO, overlap on and off, the reduced gradients
// equal the reference average; with ZeRO each rank holds its shard of the average, and
// grad_reducer_gather / grad_reducer_gather_in_place rebuild the full vectors.
#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/grad_reducer.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

// Reports [0, n) as final in chunks from the end, as backward produces them.
void report_backward(GradReducer& red, size_t n, size_t chunk) {
  for (size_t end = n; end > 0;) {
    const size_t begin = end > chunk ? end - chunk : 0;
    grad_reducer_ready(red, begin, end - begin);
    end = begin;
  }
}

void reducer_case(Communicator& comm, size_t n, size_t bucket, bool zero, bool overlap) {
  const int p = comm.size();
  const std::string what = describe("grad_reducer", comm, n) + " bucket " + std::to_string(bucket) +
                           (zero ? " zero" : "") + (overlap ? " overlap" : "");
  std::vector<float> grads(n);
  std::vector<float> shard(grad_reducer_shard_floats(n, bucket, p, comm.rank()));
  GradReducer red = grad_reducer_create(comm, grads.data(), n, bucket, zero, overlap, shard.data());
  for (int step = 0; step < 2; ++step) {
    const int salt = step * 3 + 1;
    const std::vector<float> input = input_vector<float>(comm.rank(), n, salt);
    std::copy(input.begin(), input.end(), grads.begin());  // the reducer holds grads.data()
    std::vector<float> average(n, 0.0f);
    for (int r = 0; r < p; ++r)
      for (size_t i = 0; i < n; ++i) average[i] += static_cast<float>(input_value(r, i, salt));
    for (float& x : average) x /= static_cast<float>(p);

    grad_reducer_begin(red);
    // Only the last bucket (the buffer's end) is complete after the first report.
    grad_reducer_ready(red, red.buckets[0].range.begin, red.buckets[0].range.size());
    EXPECT_EQ(red.buckets[0].work != nullptr, overlap) << what;
    if (red.buckets.size() > 1) {
      EXPECT_EQ(red.buckets[1].work, nullptr) << what;
    }
    report_backward(red, red.buckets[0].range.begin, 777);
    try {
      grad_reducer_finish(red);
    } catch (const CommError& e) {
      ADD_FAILURE() << what << ": " << e.what();
    }
    for (const GradBucket& b : red.buckets) EXPECT_EQ(b.work, nullptr) << what;

    if (!zero) {
      EXPECT_TRUE(same_values(grads, average, what, 1e-6));
      continue;
    }
    // shard: this rank's part of every bucket, compact, in bucket order.
    std::vector<float> expected_shard;
    for (const ShardRange& own : grad_reducer_owned(red))
      expected_shard.insert(expected_shard.end(), average.begin() + own.begin,
                            average.begin() + own.end);
    EXPECT_TRUE(same_values(shard, expected_shard, what + " shard", 1e-6));

    std::vector<float> full(n, -1.0f);
    try {
      grad_reducer_gather(red, shard.data(), full.data());
    } catch (const CommError& e) {
      ADD_FAILURE() << what << ": " << e.what();
    }
    EXPECT_TRUE(same_values(full, average, what + " gathered", 1e-6));

    // Parameters updated in place on each rank's shard only, garbage elsewhere.
    std::vector<float> params(n, -7.0f), updated(n);
    for (size_t i = 0; i < n; ++i) updated[i] = static_cast<float>(input_value(99, i, step));
    for (const ShardRange& own : grad_reducer_owned(red))
      std::copy(updated.begin() + own.begin, updated.begin() + own.end, params.begin() + own.begin);
    try {
      grad_reducer_gather_in_place(red, params.data());
    } catch (const CommError& e) {
      ADD_FAILURE() << what << ": " << e.what();
    }
    EXPECT_TRUE(same_values(params, updated, what + " gathered in place"));
  }
}

TEST(GradReducerMpi, AveragesAndShards) {
  const ProcessGroups& g = *context().groups;
  for (Communicator* comm : {g.dp_sp.get(), g.world.get(), g.tp.get()})
    for (bool zero : {false, true})
      for (bool overlap : {false, true}) {
        reducer_case(*comm, 10007, 1024, zero, overlap);  // 10 buckets; the lowest one short
        reducer_case(*comm, 5, 1024, zero, overlap);      // one bucket, fewer floats than ranks
        reducer_case(*comm, 4096, 1024, zero, overlap);   // buckets that divide n
      }
}

}  // namespace
}  // namespace loom::test
