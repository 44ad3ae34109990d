// Single-process tests of parallel/ (no MPI started): shard_range, parse_fault_injection, the
// self communicator, GradReducer over a group of one, including its LOOM_CHECK invariants, and
// the vocabulary-parallel cross-entropy over a group of one.
#include <gtest/gtest.h>

#include <numeric>

#include "base/error.h"
#include "parallel/communicator.h"
#include "parallel/grad_reducer.h"
#include "parallel/mpi_runtime.h"
#include "parallel/vocab_parallel.h"
#include "tests/parallel/vocab_parallel_check.h"

namespace loom {
namespace {

TEST(ShardRange, CoversExactlyWithSizesWithinOne) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{64}, size_t{1000003}})
    for (int parts = 1; parts <= 9; ++parts) {
      size_t next = 0, smallest = n, largest = 0;
      for (int i = 0; i < parts; ++i) {
        const ShardRange s = shard_range(n, parts, i);
        EXPECT_EQ(s.begin, next) << "n " << n << " parts " << parts << " index " << i;
        EXPECT_LE(s.begin, s.end);
        next = s.end;
        smallest = std::min(smallest, s.size());
        largest = std::max(largest, s.size());
        // The first n % parts shards are the longer ones.
        EXPECT_EQ(s.size(), n / parts + (static_cast<size_t>(i) < n % parts ? 1 : 0));
      }
      EXPECT_EQ(next, n) << "n " << n << " parts " << parts;
      EXPECT_LE(largest - smallest, 1u) << "n " << n << " parts " << parts;
    }
}

TEST(FaultInjection, ParsesGoodSpecs) {
  EXPECT_EQ(parse_fault_injection("").action, FaultInjection::Action::kNone);
  FaultInjection f = parse_fault_injection("rank=1,group=world,op=3,action=delay,seconds=2.5");
  EXPECT_EQ(f.action, FaultInjection::Action::kDelay);
  EXPECT_EQ(f.rank, 1);
  EXPECT_EQ(f.group, "world");
  EXPECT_EQ(f.op, 3);
  EXPECT_DOUBLE_EQ(f.seconds, 2.5);
  f = parse_fault_injection("action=fail,group=dp,rank=0");  // any order; op defaults to 0
  EXPECT_EQ(f.action, FaultInjection::Action::kFail);
  EXPECT_EQ(f.group, "dp");
  EXPECT_EQ(f.op, 0);
  EXPECT_EQ(parse_fault_injection("rank=2,group=tp,op=0,action=kill").action,
            FaultInjection::Action::kKill);
  f = parse_fault_injection("rank=*,group=tp,op=*,action=delay,seconds=0.02");
  EXPECT_EQ(f.rank, FaultInjection::kEveryRank);
  EXPECT_EQ(f.op, FaultInjection::kEveryOp);
  EXPECT_DOUBLE_EQ(f.seconds, 0.02);
}

TEST(FaultInjection, AppliesToTheChosenRanksGroupAndOperations) {
  const FaultInjection none;
  EXPECT_FALSE(none.applies_to(0, "", 0));

  const FaultInjection one = parse_fault_injection("rank=1,group=dp,op=3,action=fail");
  EXPECT_TRUE(one.applies_to(1, "dp", 3));
  EXPECT_FALSE(one.applies_to(0, "dp", 3));
  EXPECT_FALSE(one.applies_to(1, "dp", 2));
  EXPECT_FALSE(one.applies_to(1, "tp", 3));

  // A per-operation latency on every rank: every operation of tp, nothing else.
  const FaultInjection every = parse_fault_injection("rank=*,group=tp,op=*,action=delay,seconds=1");
  for (int rank : {0, 1, 7})
    for (long op : {0L, 1L, 1000L}) {
      EXPECT_TRUE(every.applies_to(rank, "tp", op)) << "rank " << rank << " op " << op;
      EXPECT_FALSE(every.applies_to(rank, "dp", op)) << "rank " << rank << " op " << op;
    }

  const FaultInjection every_op = parse_fault_injection("rank=2,group=world,op=*,action=delay");
  EXPECT_TRUE(every_op.applies_to(2, "world", 5));
  EXPECT_FALSE(every_op.applies_to(1, "world", 5));
  const FaultInjection every_rank = parse_fault_injection("rank=*,group=world,op=4,action=kill");
  EXPECT_TRUE(every_rank.applies_to(3, "world", 4));
  EXPECT_FALSE(every_rank.applies_to(3, "world", 5));
}

TEST(FaultInjection, RejectsBadSpecsNamingThePart) {
  const std::pair<const char*, const char*> bad[] = {
      {"rank=1,group=world,op=3,action=explode", "explode"},
      {"rank=x,group=world,action=fail", "rank=x"},
      {"rank=1,group=world,op=,action=fail", "op="},
      {"rank=1,group=world,action=delay,seconds=soon", "seconds=soon"},
      {"rank=1,group=world,action=fail,color=red", "color=red"},
      {"rank=1,group=world", "action="},               // missing action
      {"group=world,action=fail", "rank="},            // missing rank
      {"rank=1,action=fail", "group="},                // missing group
      {"rank=1x,group=world,action=fail", "rank=1x"},  // trailing junk after a number
      {"rank=1,group=world,op=3.5,action=fail", "op=3.5"},
      // Negative numbers are not a spelling of "every" (*).
      {"rank=-1,group=world,action=fail", "rank=-1"},
      {"rank=1,group=world,op=-1,action=fail", "op=-1"},
      {"rank=1,group=world,action=delay,seconds=-2", "seconds=-2"},
      {"rank=1,group=world,action=delay,seconds=inf", "seconds=inf"},
      {"rank=**,group=world,action=fail", "rank=**"},
      {"rank=1,group=world,op=*3,action=fail", "op=*3"},
  };
  for (const auto& [spec, named] : bad) {
    try {
      parse_fault_injection(spec);
      ADD_FAILURE() << "accepted \"" << spec << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(named), std::string::npos)
          << "the message for \"" << spec << "\" does not name \"" << named << "\": " << e.what();
      EXPECT_NE(std::string(e.what()).find("rank=R|*,group=G,op=K|*,action=delay|fail|kill"),
                std::string::npos)
          << "the message for \"" << spec << "\" does not show the syntax: " << e.what();
    }
  }
}

TEST(SelfCommunicator, CompletesAtOnceAndCopies) {
  std::unique_ptr<Communicator> self = make_self_communicator("dp", 5);
  EXPECT_EQ(self->rank(), 0);
  EXPECT_EQ(self->size(), 1);
  EXPECT_EQ(self->name(), "dp");
  EXPECT_EQ(self->global_ranks(), std::vector<int>{5});

  std::vector<float> data = {1, 2, 3};
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
    WorkPtr w = self->all_reduce_async(data.data(), 3, DataType::kFloat32, op);
    EXPECT_TRUE(w->is_completed());
    w->wait();
    EXPECT_EQ(data, (std::vector<float>{1, 2, 3}));
  }
  std::vector<float> out(3, 0);
  self->reduce_scatter(data.data(), out.data(), 3, ReduceOp::kAvg);
  EXPECT_EQ(out, data);
  out.assign(3, 0);
  self->all_gather(data.data(), out.data(), 3);
  EXPECT_EQ(out, data);
  self->all_gather(out.data(), out.data(), 3);  // in place
  EXPECT_EQ(out, data);
  self->all_gather(data.data(), out.data(), 0);  // nothing to do
  double d = 4;
  self->broadcast(&d, 1, DataType::kFloat64, 0);
  EXPECT_EQ(d, 4);
  self->barrier();
  EXPECT_THROW(self->send_async(data.data(), 3, DataType::kFloat32, 1)->wait(), CommError);
  EXPECT_THROW(self->recv(data.data(), 3, DataType::kFloat32, 0), CommError);
  EXPECT_TRUE(make_completed_work()->is_completed());
  EXPECT_THROW(make_completed_work("broken")->wait(), CommError);
  EXPECT_DEATH(self->broadcast(&d, 1, DataType::kFloat64, 1), "root == 0");
}

TEST(GradReducerSelf, CutsBucketsFromTheEnd) {
  std::unique_ptr<Communicator> self = make_self_communicator("dp_sp", 0);
  std::vector<float> grads(10);
  GradReducer red = grad_reducer_create(*self, grads.data(), 10, 4, false, true);
  ASSERT_EQ(red.buckets.size(), 3u);
  EXPECT_EQ(red.buckets[0].range.begin, 6u);
  EXPECT_EQ(red.buckets[0].range.end, 10u);
  EXPECT_EQ(red.buckets[1].range.begin, 2u);
  EXPECT_EQ(red.buckets[2].range.begin, 0u);
  EXPECT_EQ(red.buckets[2].range.end, 2u);
  ASSERT_EQ(grad_reducer_owned(red).size(), 1u);
  EXPECT_EQ(grad_reducer_owned(red)[0].end, 10u);
  EXPECT_EQ(red.shard, nullptr);
}

TEST(GradReducerSelf, LaunchesWhenABucketIsComplete) {
  std::unique_ptr<Communicator> self = make_self_communicator("dp_sp", 0);
  std::vector<float> grads(10);
  std::iota(grads.begin(), grads.end(), 1.0f);
  for (bool overlap : {true, false}) {
    GradReducer red = grad_reducer_create(*self, grads.data(), 10, 4, false, overlap);
    grad_reducer_begin(red);
    grad_reducer_ready(red, 8, 2);
    EXPECT_EQ(red.buckets[0].work, nullptr);  // [6, 10) half reported
    grad_reducer_ready(red, 5, 3);            // completes [6, 10), starts [2, 6)
    EXPECT_EQ(red.buckets[0].work != nullptr, overlap);
    EXPECT_EQ(red.buckets[1].work, nullptr);
    grad_reducer_ready(red, 0, 5);
    EXPECT_EQ(red.buckets[1].work != nullptr, overlap);
    EXPECT_EQ(red.buckets[2].work != nullptr, overlap);
    grad_reducer_finish(red);
    for (const GradBucket& b : red.buckets) EXPECT_EQ(b.work, nullptr);
    EXPECT_FLOAT_EQ(grads[9], 10.0f);  // the average over one rank
    grad_reducer_begin(red);           // the next step
  }
}

TEST(GradReducerSelf, ZeroShardIsTheWholeBucket) {
  std::unique_ptr<Communicator> self = make_self_communicator("dp_sp", 0);
  std::vector<float> grads(10);
  std::iota(grads.begin(), grads.end(), 1.0f);
  ASSERT_EQ(grad_reducer_shard_floats(10, 4, 1, 0), 10u);
  std::vector<float> shard(10);
  GradReducer red = grad_reducer_create(*self, grads.data(), 10, 4, true, true, shard.data());
  const std::vector<ShardRange> owned = grad_reducer_owned(red);
  ASSERT_EQ(owned.size(), 3u);
  EXPECT_EQ(owned[0].begin, 6u);
  EXPECT_EQ(owned[2].end, 2u);
  grad_reducer_begin(red);
  grad_reducer_ready(red, 0, 10);
  grad_reducer_finish(red);
  // Compact order is bucket order: [6, 10), [2, 6), [0, 2).
  EXPECT_EQ(shard, (std::vector<float>{7, 8, 9, 10, 3, 4, 5, 6, 1, 2}));
  std::vector<float> full(10, 0);
  grad_reducer_gather(red, shard.data(), full.data());
  EXPECT_EQ(full, grads);
  grad_reducer_gather_in_place(red, grads.data());
  EXPECT_FLOAT_EQ(grads[0], 1.0f);
}

TEST(GradReducerSelfDeathTest, ChecksItsInvariants) {
  std::unique_ptr<Communicator> self = make_self_communicator("dp_sp", 0);
  std::vector<float> grads(10);
  EXPECT_DEATH(grad_reducer_create(*self, grads.data(), 10, 0, false, true), "bucket_floats > 0");
  GradReducer red = grad_reducer_create(*self, grads.data(), 10, 4, false, true);
  grad_reducer_begin(red);
  EXPECT_DEATH(grad_reducer_ready(red, 8, 4), "offset \\+ count <= r.n");
  EXPECT_DEATH(grad_reducer_finish(red), "b.ready == b.range.size()");
  grad_reducer_ready(red, 7, 3);
  // Counting catches a report that overflows its bucket ([5, 10) after [7, 10)); a repeat that
  // replaces a missing gradient in the same bucket goes unnoticed (counts, not intervals).
  EXPECT_DEATH(grad_reducer_ready(red, 5, 5), "b.ready <= b.range.size()");
  EXPECT_DEATH(grad_reducer_gather(red, grads.data(), grads.data()), "r.zero");
  EXPECT_DEATH(grad_reducer_gather_in_place(red, grads.data()), "r.zero");
  grad_reducer_ready(red, 6, 1);  // completes [6, 10): launched, not yet finished
  EXPECT_DEATH(grad_reducer_begin(red), "!b.work");
}

// One rank holds the whole vocabulary, unpadded (vocab_shard) and with padding rows past it that
// must be ignored; several chunks, one chunk, and a chunk larger than N.
TEST(VocabParallelSelf, MatchesTheFullCrossEntropy) {
  std::unique_ptr<Communicator> self = make_self_communicator("tp", 0);
  for (const test::VocabParallelCase& k :
       {test::VocabParallelCase{13, 8, 37, 5}, test::VocabParallelCase{13, 8, 37, 13},
        test::VocabParallelCase{7, 8, 64, 16}}) {
    const VocabShard whole = vocab_shard(k.V, 1, 0);
    EXPECT_EQ(whole.vocab_begin, 0);
    EXPECT_EQ(whole.rows, k.V);
    EXPECT_EQ(whole.valid, k.V);
    test::expect_vocab_parallel_matches_full(*self, whole, k);
    test::expect_vocab_parallel_matches_full(*self, VocabShard{0, k.V + 3, k.V}, k);
  }
}

}  // namespace
}  // namespace loom
