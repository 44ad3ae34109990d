// The MPI backend records every operation in the flight recorder (parallel/flight_recorder.h):
// collectives numbered in issue order, send/recv by pair, the peer, the size, and each one
// completed — with its start and finish times — before its Work reports completion.
#include <algorithm>
#include <memory>
#include <vector>

#include "parallel/flight_recorder.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {
namespace {

TEST(FlightRecorderMpi, RecordsEveryOperationOfAGroupInOrder) {
  ParallelTestContext& ctx = context();
  // A fresh group over every rank, so its numbering starts here.
  std::unique_ptr<Communicator> comm = mpi_split(*ctx.mpi, "flight", 0, mpi_world_rank(*ctx.mpi));
  const int p = comm->size(), r = comm->rank();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  std::vector<float> data(5, 1.0f), full(10, 0.0f), shard(10, 1.0f);
  std::vector<int64_t> words(3, r);
  std::vector<double> out(4, r), in(4);
  comm->all_reduce(data.data(), data.size());                            // #0
  comm->barrier();                                                       // #1
  comm->broadcast(words.data(), words.size(), DataType::kInt64, p - 1);  // #2
  comm->reduce_scatter(full.data(), shard.data(), 10);                   // #3
  comm->all_gather(full.data(), full.data(), 10);                        // #4
  WorkPtr sent = comm->send_async(out.data(), out.size(), DataType::kFloat64, next);
  WorkPtr received = comm->recv_async(in.data(), in.size(), DataType::kFloat64, prev);
  sent->wait();
  received->wait();
  comm->all_reduce(data.data(), data.size(), ReduceOp::kMax);  // #5

  std::lock_guard lock(ctx.flight->mutex);
  const FlightRecorder& rec = *ctx.flight;
  int group = -1;
  for (size_t g = 0; g < rec.groups.size(); ++g)
    if (rec.groups[g].name == "flight") group = static_cast<int>(g);  // the newest of the name
  ASSERT_GE(group, 0);
  EXPECT_EQ(rec.groups[group].ranks, comm->global_ranks());
  std::vector<FlightEntry> entries;
  for (const FlightEntry& e : rec.ring)
    if (e.group == group) entries.push_back(e);
  std::sort(entries.begin(), entries.end(),
            [](const FlightEntry& a, const FlightEntry& b) { return a.id < b.id; });
  const FlightOp kinds[] = {FlightOp::kAllReduce,     FlightOp::kBarrier,   FlightOp::kBroadcast,
                            FlightOp::kReduceScatter, FlightOp::kAllGather, FlightOp::kSend,
                            FlightOp::kRecv,          FlightOp::kAllReduce};
  const long seqs[] = {0, 1, 2, 3, 4, -1, -1, 5};
  ASSERT_EQ(entries.size(), 8u);
  for (size_t i = 0; i < entries.size(); ++i) {
    const FlightEntry& e = entries[i];
    EXPECT_EQ(e.info.op, kinds[i]) << "entry " << i << ": " << flight_op_name(e.info.op);
    EXPECT_EQ(e.index, static_cast<long>(i));
    EXPECT_EQ(e.seq, seqs[i]) << "entry " << i;
    EXPECT_EQ(e.state, FlightState::kCompleted) << "entry " << i;
    EXPECT_LE(e.issued, e.started) << "entry " << i;
    EXPECT_LE(e.started, e.finished) << "entry " << i;
  }
  EXPECT_EQ(entries[0].info.count, 5u);
  EXPECT_EQ(entries[0].info.reduce, ReduceOp::kSum);
  EXPECT_EQ(entries[7].info.reduce, ReduceOp::kMax);
  EXPECT_EQ(entries[2].info.peer, p - 1);  // the broadcast's root
  EXPECT_EQ(entries[2].info.type, DataType::kInt64);
  EXPECT_EQ(entries[5].info.peer, next);
  EXPECT_EQ(entries[5].pair_seq, 0);
  EXPECT_EQ(entries[6].info.peer, prev);
  EXPECT_EQ(entries[6].info.count, 4u);
  const FlightGroup& g = rec.groups[group];
  EXPECT_EQ(g.operations, 8);
  EXPECT_EQ(g.collectives, 6);
  EXPECT_EQ(g.completed, 6);
  EXPECT_EQ(g.sent[next], 1);
  EXPECT_EQ(g.received[prev], 1);
}

}  // namespace
}  // namespace loom::test
