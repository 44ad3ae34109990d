// `loom doctor`'s analysis (tools/flight_doctor.h) on synthetic dumps of hung jobs — a stopped
// rank, a skipped operation, collectives called in different orders, a rank without a dump, a
// pipeline transfer never sent, a healthy snapshot — and the dump format read back from the
// recorder that writes it (parallel/flight_recorder.h).
#include <gtest/gtest.h>

#include <fstream>

#include "tools/flight_doctor.h"
#include "parallel/flight_recorder.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

using testing::error_of;
using testing::TempDir;
using Dump = config::FlightDump;
using Entry = config::FlightDump::Entry;

constexpr double kDumpTime = 1.75e9;  // Unix seconds at which every synthetic rank dumps

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A job of synthetic dumps, one per rank in `with_dump`, on a dp × pp × tp mesh.
struct Job {
  std::vector<Dump> dumps;

  Job(int dp, int pp, int tp, const std::vector<int>& with_dump) {
    for (int r : with_dump) {
      Dump d;
      d.set_rank(r);
      d.set_world_size(dp * pp * tp);
      d.mutable_mesh()->set_dp(dp);
      d.mutable_mesh()->set_pp(pp);
      d.mutable_mesh()->set_sp(1);
      d.mutable_mesh()->set_tp(tp);
      d.mutable_coord()->set_tp(r % tp);
      d.mutable_coord()->set_dp(r / tp % dp);
      d.mutable_coord()->set_pp(r / (tp * dp));
      d.set_hostname("node");
      d.set_pid(1000 + r);
      d.set_time_unix(kDumpTime);
      d.set_trigger(r == with_dump.front() ? "error" : "asked by rank 0");
      dumps.push_back(d);
    }
  }
  Dump& rank(int r) {
    for (Dump& d : dumps)
      if (d.rank() == r) return d;
    throw std::out_of_range("no dump of rank " + std::to_string(r));
  }
  // Rank r's membership of group `name`, having issued `collectives` and completed `completed`.
  int group(int r, const std::string& name, const std::vector<int>& ranks, int collectives,
            int completed) {
    Dump::Group* g = rank(r).add_groups();
    g->set_name(name);
    for (int m : ranks) {
      g->add_ranks(m);
      g->add_sent(0);
      g->add_received(0);
    }
    g->set_collectives(collectives);
    g->set_operations(collectives);
    g->set_completed(completed);
    return rank(r).groups_size() - 1;
  }
  // A collective of rank r's group `g`, issued `ago` seconds before the dump.
  Entry& collective(int r, int g, int seq, const std::string& op, int count,
                    const std::string& state, double ago) {
    Entry& e = *rank(r).add_entries();
    e.set_id(rank(r).entries_size() - 1);
    e.set_group(g);
    e.set_seq(seq);
    e.set_index(seq);
    e.set_op(op);
    e.set_dtype("float32");
    if (op == "all_reduce") e.set_reduce("sum");
    e.set_count(count);
    e.set_bytes(4 * count);
    e.set_state(state);
    e.set_issued_unix(kDumpTime - ago);
    if (state == "completed") e.set_finished_unix(kDumpTime - ago + 0.001);
    return e;
  }
  void phase(int r, long step, const std::string& name, int micro = -1) {
    set_phase(rank(r).mutable_phase(), step, name, micro);
  }
  static void set_phase(Dump::Phase* p, long step, const std::string& name, int micro = -1) {
    p->set_step(step);
    p->set_name(name);
    p->set_micro(micro);
    p->set_chunk(micro >= 0 ? 0 : -1);
  }
};

TEST(FlightDoctor, NamesTheStoppedRankAndWhatEachRankWaitsFor) {
  // dp = 2 × tp = 2. Rank 3 stopped in backward (micro-batch 2 of step 5) after dp_sp #41: rank 1
  // waits in dp_sp #42 for it, rank 2 in tp #17 for it, rank 0 in dp_sp #42 for rank 2.
  Job job(2, 1, 2, {0, 1, 2, 3});
  const int tp01 = job.group(0, "tp", {0, 1}, 17, 17);
  job.group(1, "tp", {0, 1}, 17, 17);
  const int tp23_2 = job.group(2, "tp", {2, 3}, 18, 17);
  const int tp23_3 = job.group(3, "tp", {2, 3}, 17, 17);
  const int dp02_0 = job.group(0, "dp_sp", {0, 2}, 43, 42);
  job.group(2, "dp_sp", {0, 2}, 42, 42);
  const int dp13_1 = job.group(1, "dp_sp", {1, 3}, 43, 42);
  const int dp13_3 = job.group(3, "dp_sp", {1, 3}, 42, 42);
  (void)tp01;
  Job::set_phase(
      job.collective(3, dp13_3, 41, "all_reduce", 4096, "completed", 31.5).mutable_phase(), 5,
      "backward", 1);
  job.collective(3, tp23_3, 16, "all_reduce", 1024, "completed", 31.0);
  job.collective(1, dp13_1, 42, "all_reduce", 4096, "timed_out", 31.2);
  job.collective(2, tp23_2, 17, "all_reduce", 1024, "started", 30.0);
  job.collective(0, dp02_0, 42, "all_reduce", 4096, "started", 29.0);
  job.phase(3, 5, "backward", 2);
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.behind, std::vector<int>{3}) << d.text;
  EXPECT_TRUE(d.missing.empty());
  EXPECT_TRUE(d.mismatches.empty());
  EXPECT_TRUE(d.stuck);
  for (const char* part :
       {"rank 3 (dp=1 tp=1) is behind.",
        "In group dp_sp [ranks 1 3] it never issued #42 all_reduce of 4096 float32 (sum), which "
        "rank 1 waits in; its last collective there is #41 all_reduce of 4096 float32 (sum) "
        "(completed",
        "In group tp [ranks 2 3] it never issued #17 all_reduce of 1024 float32 (sum), which rank "
        "2 waits in",
        "It is at step 5, backward of micro-batch 2, and waits on no communication",
        "rank 1 waits 31.2 s in group dp_sp [ranks 1 3] #42 all_reduce of 4096 float32 (sum) for "
        "rank 3 (timed_out",
        "rank 0 waits 29.0 s in group dp_sp [ranks 0 2] #42 all_reduce of 4096 float32 (sum) for "
        "rank 2"})
    EXPECT_TRUE(contains(d.text, part)) << "missing: " << part << "\n" << d.text;
}

TEST(FlightDoctor, ARankThatSkippedAnOperationWentOnPastIt) {
  // tp = 2: rank 1 skipped tp #62 (the gradient-norm sum) and waits in world #5 at the end of the
  // step; rank 0 waits in tp #62. A cycle; rank 1 went further in the step.
  Job job(1, 1, 2, {0, 1});
  const int w0 = job.group(0, "world", {0, 1}, 5, 5);
  const int w1 = job.group(1, "world", {0, 1}, 6, 5);
  const int t0 = job.group(0, "tp", {0, 1}, 63, 62);
  const int t1 = job.group(1, "tp", {0, 1}, 62, 62);
  (void)w0;
  job.collective(1, t1, 61, "all_reduce", 4096, "completed", 2.1);
  Job::set_phase(job.collective(0, t0, 62, "all_reduce", 1, "timed_out", 2.0).mutable_phase(), 3,
                 "loss and gradient norm");
  Job::set_phase(job.collective(1, w1, 5, "all_reduce", 1, "timed_out", 2.0).mutable_phase(), 3,
                 "end of step (trace, metrics, stop check)");
  job.phase(0, 3, "loss and gradient norm");
  job.phase(1, 3, "end of step (trace, metrics, stop check)");
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.behind, std::vector<int>{1}) << d.text;
  for (const char* part :
       {"The waits form a cycle", "rank 1 (tp=1) is behind.",
        "In group tp [ranks 0 1] it never issued #62 all_reduce of 1 float32 (sum), which rank 0 "
        "waits in",
        "itself waits in group world [ranks 0 1] #5 all_reduce of 1 float32 (sum) for rank 0",
        "skipped that operation"})
    EXPECT_TRUE(contains(d.text, part)) << "missing: " << part << "\n" << d.text;
}

TEST(FlightDoctor, InACycleTheRankNamedIsTheOneThatWentFurther) {
  // dp = 2 × tp = 2: rank 3 skipped tp #62 and waits in world #5 (end of step) with rank 1;
  // rank 2 waits in tp #62 for rank 3, rank 0 in dp_sp #5 for rank 2 — both in the same phase,
  // rank 0's wait the older. Rank 2 is waited for but is no further than rank 0: rank 3 is named.
  Job job(2, 1, 2, {0, 1, 2, 3});
  const char* kEnd = "end of step (trace, metrics, stop check)";
  const int dp0 = job.group(0, "dp_sp", {0, 2}, 6, 5);
  job.group(2, "dp_sp", {0, 2}, 5, 5);
  const int tp2 = job.group(2, "tp", {2, 3}, 63, 62);
  job.group(3, "tp", {2, 3}, 62, 62);
  for (int r : {0, 1, 2, 3}) {
    const bool ahead = r == 1 || r == 3;
    const int w = job.group(r, "world", {0, 1, 2, 3}, ahead ? 6 : 5, 5);
    if (ahead)
      Job::set_phase(job.collective(r, w, 5, "all_reduce", 1, "timed_out", 2.0).mutable_phase(), 3,
                     kEnd);
    job.phase(r, 3, ahead ? kEnd : "loss and gradient norm");
  }
  Job::set_phase(job.collective(0, dp0, 5, "all_reduce", 2, "timed_out", 2.2).mutable_phase(), 3,
                 "loss and gradient norm");
  Job::set_phase(job.collective(2, tp2, 62, "all_reduce", 1, "timed_out", 2.1).mutable_phase(), 3,
                 "loss and gradient norm");
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.behind, std::vector<int>{3}) << d.text;
  EXPECT_TRUE(contains(d.text,
                       "rank 3 (dp=1 tp=1) is behind. In group tp [ranks 2 3] it never "
                       "issued #62"))
      << d.text;
}

TEST(FlightDoctor, FindsCollectivesCalledInDifferentOrders) {
  // dp = 2: rank 1 issued buckets #13 and #14 the other way round.
  Job job(2, 1, 1, {0, 1});
  const int g0 = job.group(0, "dp_sp", {0, 1}, 15, 13);
  const int g1 = job.group(1, "dp_sp", {0, 1}, 15, 13);
  job.collective(0, g0, 13, "all_reduce", 2621, "failed", 0.2);
  job.collective(0, g0, 14, "all_reduce", 2594, "failed", 0.2);
  job.collective(1, g1, 13, "all_reduce", 2594, "failed", 0.2);
  job.collective(1, g1, 14, "all_reduce", 2621, "failed", 0.2);
  job.collective(1, g1, 12, "all_reduce", 2621, "completed", 0.3);
  job.collective(0, g0, 12, "all_reduce", 2621, "completed", 0.3);
  FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.mismatches, std::vector<std::string>{"dp_sp #13"}) << d.text;
  EXPECT_FALSE(d.stuck);
  for (const char* part :
       {"group dp_sp [ranks 0 1] #13: the ranks called different collectives:",
        "rank 0: #13 all_reduce of 2621 float32 (sum)", "rank 1: #13 all_reduce of 2594 float32",
        "rank 0 and rank 1 issued #13 and #14 in opposite orders"})
    EXPECT_TRUE(contains(d.text, part)) << "missing: " << part << "\n" << d.text;

  // Three members, one calling another collective: the others are named together.
  Job three(1, 1, 3, {0, 1, 2});
  for (int r = 0; r < 3; ++r) {
    const int g = three.group(r, "tp", {0, 1, 2}, 18, 17);
    three.collective(r, g, 17, r == 2 ? "all_gather" : "all_reduce", r == 2 ? 2048 : 4096,
                     "timed_out", 5);
  }
  d = flight_diagnose(three.dumps);
  EXPECT_EQ(d.mismatches, std::vector<std::string>{"tp #17"}) << d.text;
  EXPECT_TRUE(contains(d.text, "ranks 0 and 1: #17 all_reduce of 4096 float32 (sum)")) << d.text;
  EXPECT_TRUE(contains(d.text, "rank 2: #17 all_gather of 2048 float32")) << d.text;
  // Every member issued #17: nobody is behind; the transport is named instead.
  EXPECT_TRUE(d.behind.empty()) << d.text;
  EXPECT_TRUE(contains(d.text, "which every member issued")) << d.text;
}

TEST(FlightDoctor, ARankWithoutADumpIsTheOneWaitedFor) {
  Job job(3, 1, 1, {0, 1});
  for (int r : {0, 1}) {
    const int g = job.group(r, "world", {0, 1, 2}, 8, 7);
    job.collective(r, g, 7, "all_reduce", 1, "timed_out", 10);
  }
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.missing, std::vector<int>{2});
  EXPECT_EQ(d.behind, std::vector<int>{2}) << d.text;
  EXPECT_TRUE(contains(d.text, "no dump from rank 2")) << d.text;
  EXPECT_TRUE(contains(d.text, "rank 2 (dp=2) left no dump")) << d.text;
  EXPECT_TRUE(contains(d.text, "ranks 0 and 1 wait 10.0 s in group world [ranks 0 1 2] #7"))
      << d.text;
}

TEST(FlightDoctor, APipelineReceiveWaitsForTheSendItsPeerNeverIssued) {
  // pp = 2: rank 1 waits for its 4th receive from rank 0 (pair number 3); rank 0 has sent 3.
  Job job(1, 2, 1, {0, 1});
  const int g0 = job.group(0, "pp", {0, 1}, 2, 2);
  const int g1 = job.group(1, "pp", {0, 1}, 2, 2);
  job.rank(0).mutable_groups(g0)->set_sent(1, 3);
  job.rank(1).mutable_groups(g1)->set_received(0, 4);
  Entry& recv = *job.rank(1).add_entries();
  recv.set_group(g1);
  recv.set_op("recv");
  recv.set_dtype("float32");
  recv.set_count(96);
  recv.set_peer(0);
  recv.set_pair_seq(3);
  recv.set_state("started");
  recv.set_issued_unix(kDumpTime - 4);
  job.phase(0, 2, "forward", 3);
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_EQ(d.behind, std::vector<int>{0}) << d.text;
  EXPECT_TRUE(contains(d.text,
                       "rank 0 (pp=0) is behind. In group pp [ranks 0 1] it never issued "
                       "the send matching rank 1's recv of 96 float32 from rank 0"))
      << d.text;
  EXPECT_TRUE(contains(d.text, "It is at step 2, forward of micro-batch 3 (chunk 0)")) << d.text;
}

TEST(FlightDoctor, AHealthySnapshotLooksStuckNowhere) {
  Job job(2, 1, 1, {0, 1});
  for (int r : {0, 1}) {
    const int g = job.group(r, "dp_sp", {0, 1}, 5, 4);
    job.collective(r, g, 4, "all_reduce", 100, "started", 0.01);
    job.phase(r, 9, "backward", 0);
  }
  const FlightDiagnosis d = flight_diagnose(job.dumps);
  EXPECT_FALSE(d.stuck);
  EXPECT_TRUE(d.behind.empty());
  EXPECT_TRUE(contains(d.text, "nothing looks stuck")) << d.text;
  EXPECT_TRUE(contains(d.text, "rank 1 (dp=1): step 9, backward of micro-batch 0")) << d.text;
}

TEST(FlightDoctor, ReadsWhatTheRecorderWrites) {
  TempDir run;
  FlightRecorder rec(8);
  const int g = flight_add_group(rec, "tp", {2, 3});
  flight_step(&rec, 4, "forward");
  const uint64_t id = flight_issue(rec, g, 0,
                                   {.op = FlightOp::kAllReduce,
                                    .type = DataType::kFloat64,
                                    .count = 2,
                                    .reduce = ReduceOp::kMax});
  flight_start(rec, id);
  flight_finish(rec, id, FlightState::kCompleted);
  flight_issue(rec, g, 1,
               {.op = FlightOp::kSend,
                .type = DataType::kByte,
                .count = 5,
                .reduce = std::nullopt,
                .peer = 0});
  FlightDumpTarget target;
  target.path = flight_dump_path(run.str(), 3);
  target.rank = 3;
  target.world_size = 4;
  target.mesh[3] = 2;
  target.coord[3] = 1;
  flight_set_target(rec, target);
  ASSERT_EQ(flight_dump(rec, "SIGUSR2"), "");
  const std::vector<Dump> dumps = flight_dumps_read(run.str());
  ASSERT_EQ(dumps.size(), 1u);
  const Dump& d = dumps[0];
  EXPECT_EQ(d.rank(), 3);
  EXPECT_EQ(d.world_size(), 4);
  EXPECT_EQ(d.mesh().tp(), 2);
  EXPECT_EQ(d.coord().tp(), 1);
  EXPECT_EQ(d.trigger(), "SIGUSR2");
  EXPECT_GT(d.time_unix(), 1.6e9);
  EXPECT_EQ(d.phase().step(), 4);
  ASSERT_EQ(d.groups_size(), 1);
  EXPECT_EQ(d.groups(0).ranks_size(), 2);
  EXPECT_EQ(d.groups(0).collectives(), 1);
  EXPECT_EQ(d.groups(0).completed(), 1);
  EXPECT_EQ(d.groups(0).sent(0), 1);
  ASSERT_EQ(d.entries_size(), 2);
  const Entry& a = d.entries(0);
  EXPECT_EQ(a.op(), "all_reduce");
  EXPECT_EQ(a.reduce(), "max");
  EXPECT_EQ(a.bytes(), 16);
  EXPECT_EQ(a.seq(), 0);
  EXPECT_EQ(a.state(), "completed");
  EXPECT_LE(a.issued_unix(), a.started_unix());
  EXPECT_LE(a.started_unix(), a.finished_unix());
  EXPECT_EQ(a.phase().name(), "forward");
  const Entry& s = d.entries(1);
  EXPECT_EQ(s.op(), "send");
  EXPECT_EQ(s.seq(), -1);
  EXPECT_EQ(s.peer(), 2);  // global rank of group rank 0
  EXPECT_EQ(s.pair_seq(), 0);
  EXPECT_EQ(s.finished_unix(), 0);
}

TEST(FlightDoctor, SaysWhenThereIsNothingToRead) {
  TempDir run;
  EXPECT_TRUE(contains(error_of([&] { flight_dumps_read(run.str()); }),
                       "no flight-recorder dumps in " + run.str() + "/flight"));
  std::filesystem::create_directories(run / "flight");
  std::ofstream(run / "flight/rank_0.json") << "{\"rank\": \"zero\"";
  EXPECT_TRUE(contains(error_of([&] { flight_dumps_read(run.str()); }),
                       run / "flight/rank_0.json" + " is not a flight-recorder dump"));
}

// A world size or rank claimed by a dump is checked before anything is sized by it, and dumps of
// different jobs (or two of one rank) are refused.
TEST(FlightDoctor, ChecksWhatTheDumpsClaim) {
  TempDir run;
  std::filesystem::create_directories(run / "flight");
  std::ofstream(run / "flight/rank_0.json") << "{\"rank\": 0, \"worldSize\": 1000000000}";
  EXPECT_TRUE(contains(error_of([&] { flight_dumps_read(run.str()); }),
                       "is damaged: rank 0 of world_size 1000000000"));
  std::ofstream(run / "flight/rank_0.json", std::ios::trunc) << "{\"rank\": 2, \"worldSize\": 2}";
  EXPECT_TRUE(contains(error_of([&] { flight_dumps_read(run.str()); }),
                       "is damaged: rank 2 of world_size 2"));
  std::ofstream(run / "flight/rank_0.json", std::ios::trunc) << "{\"rank\": 0, \"worldSize\": 2}";
  std::ofstream(run / "flight/rank_1.json") << "{\"rank\": 1, \"worldSize\": 4}";
  EXPECT_TRUE(contains(error_of([&] { flight_diagnose(flight_dumps_read(run.str())); }),
                       "the flight dumps disagree on the job's size"));
}

}  // namespace
}  // namespace loom
