// Single-process tests of the flight recorder (parallel/flight_recorder.h): the ring keeps the
// last entries, collectives and send/recv are numbered apart, states and phases are recorded,
// dumps are written whole (or refused without a run directory), the dumper thread answers a
// signal count and a request; and LOOM_FAULT's hang, skip and swap parse.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "parallel/flight_recorder.h"
#include "parallel/mpi_runtime.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

FlightOpInfo all_reduce(size_t count) {
  return {.op = FlightOp::kAllReduce,
          .type = DataType::kFloat32,
          .count = count,
          .reduce = ReduceOp::kSum};
}

FlightOpInfo pair(FlightOp op, int peer) {
  return {.op = op, .type = DataType::kFloat64, .count = 3, .reduce = std::nullopt, .peer = peer};
}

// A fresh folder standing in for a run directory, removed at the end of the test.
struct TempRunDir {
  fs::path path =
      fs::temp_directory_path() / ("loom_flight_" + std::to_string(getpid()) + "_" +
                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempRunDir() {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempRunDir() { fs::remove_all(path); }
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(FlightRecorder, RingKeepsTheLastCapacityEntries) {
  FlightRecorder rec(4);
  const int g = flight_add_group(rec, "dp", {0, 1});
  std::vector<uint64_t> ids;
  for (long i = 0; i < 6; ++i) ids.push_back(flight_issue(rec, g, i, all_reduce(10 + i)));
  // The first two were overwritten: finishing them changes nothing.
  flight_finish(rec, ids[0], FlightState::kCompleted);
  for (size_t i = 2; i < 6; ++i) flight_finish(rec, ids[i], FlightState::kCompleted);
  {
    std::lock_guard lock(rec.mutex);
    EXPECT_EQ(rec.next_id, 6u);
    EXPECT_EQ(rec.groups[g].collectives, 6);
    EXPECT_EQ(rec.groups[g].completed, 4);
    for (const FlightEntry& e : rec.ring) {
      EXPECT_GE(e.id, 2u);
      EXPECT_EQ(e.seq, static_cast<long>(e.id));
      EXPECT_EQ(e.info.count, 10 + e.id);
      EXPECT_EQ(e.state, FlightState::kCompleted);
    }
  }
  const std::string json = flight_dump_json(rec, "test");
  EXPECT_TRUE(contains(json, "\"recorded\":6")) << json;
  EXPECT_TRUE(contains(json, "\"capacity\":4")) << json;
  // Oldest first: ids 2, 3, 4, 5.
  EXPECT_LT(json.find("\"id\":2,"), json.find("\"id\":5,"));
  EXPECT_FALSE(contains(json, "\"id\":1,")) << json;
}

TEST(FlightRecorder, NumbersCollectivesAndPairsApart) {
  FlightRecorder rec(16);
  const int g = flight_add_group(rec, "pp", {4, 5, 6});
  // The backend's index counts everything; collectives and each peer's sends/receives count apart.
  const uint64_t a = flight_issue(rec, g, 0, all_reduce(1));
  const uint64_t s1 = flight_issue(rec, g, 1, pair(FlightOp::kSend, 1));
  const uint64_t r2 = flight_issue(rec, g, 2, pair(FlightOp::kRecv, 2));
  FlightOpInfo barrier;
  barrier.op = FlightOp::kBarrier;
  const uint64_t b = flight_issue(rec, g, 3, barrier);
  const uint64_t s1_again = flight_issue(rec, g, 4, pair(FlightOp::kSend, 1));
  // The dump names the peer by its global rank.
  const std::string json = flight_dump_json(rec, "test");
  EXPECT_TRUE(contains(json,
                       "\"op\":\"send\",\"dtype\":\"float64\",\"count\":3,\"bytes\":24,"
                       "\"peer\":5,\"pair_seq\":1"))
      << json;
  std::lock_guard lock(rec.mutex);
  auto entry = [&](uint64_t id) { return rec.ring[id % rec.ring.size()]; };
  EXPECT_EQ(entry(a).seq, 0);
  EXPECT_EQ(entry(b).seq, 1);
  EXPECT_EQ(entry(b).index, 3);
  EXPECT_EQ(entry(s1).seq, -1);
  EXPECT_EQ(entry(s1).pair_seq, 0);
  EXPECT_EQ(entry(s1_again).pair_seq, 1);
  EXPECT_EQ(entry(r2).pair_seq, 0);
  const FlightGroup& group = rec.groups[g];
  EXPECT_EQ(group.operations, 5);
  EXPECT_EQ(group.collectives, 2);
  EXPECT_EQ(group.sent, (std::vector<long>{0, 2, 0}));
  EXPECT_EQ(group.received, (std::vector<long>{0, 0, 1}));
}

TEST(FlightRecorder, RecordsStatesTimesAndThePhaseAtIssue) {
  FlightRecorder rec(8);
  const int g = flight_add_group(rec, "tp", {0, 1});
  flight_step(&rec, 3, "loading data");
  flight_phase(&rec, "backward", 1, 0);
  const uint64_t a = flight_issue(rec, g, 0, all_reduce(4));
  flight_phase(&rec, "optimizer");
  const uint64_t b = flight_issue(rec, g, 1, all_reduce(4));
  const uint64_t c = flight_issue(rec, g, 2, all_reduce(4));
  flight_start(rec, a);
  flight_finish(rec, a, FlightState::kCompleted);
  flight_finish(rec, a, FlightState::kFailed);  // a late failure does not undo the completion
  flight_start(rec, b);
  flight_finish(rec, b, FlightState::kTimedOut);
  flight_phase(nullptr, "ignored");  // no recorder: nothing happens
  std::lock_guard lock(rec.mutex);
  const FlightEntry& ea = rec.ring[a];
  EXPECT_EQ(ea.state, FlightState::kCompleted);
  EXPECT_LE(ea.issued, ea.started);
  EXPECT_LE(ea.started, ea.finished);
  EXPECT_EQ(ea.phase.step, 3);
  EXPECT_STREQ(ea.phase.name, "backward");
  EXPECT_EQ(ea.phase.micro, 1);
  EXPECT_EQ(rec.ring[b].state, FlightState::kTimedOut);
  EXPECT_STREQ(rec.ring[b].phase.name, "optimizer");
  EXPECT_EQ(rec.ring[b].phase.micro, -1);
  EXPECT_EQ(rec.ring[c].state, FlightState::kIssued);
  EXPECT_EQ(rec.ring[c].started, FlightClock::time_point{});
  EXPECT_EQ(rec.groups[g].completed, 1);
  EXPECT_EQ(rec.phase.step, 3);
}

TEST(FlightRecorder, DumpIsWrittenWholeOnlyIntoAnExistingRunDirectory) {
  TempRunDir run;
  FlightRecorder rec(8);
  const int g = flight_add_group(rec, "world", {0, 1});
  flight_issue(rec, g, 0, all_reduce(2));
  EXPECT_TRUE(contains(flight_dump(rec, "test"), "no dump target"));
  FlightDumpTarget target;
  target.path = flight_dump_path(run.path.string(), 1);
  target.rank = 1;
  target.world_size = 2;
  target.mesh[0] = 2;
  target.coord[0] = 1;
  flight_set_target(rec, target);
  flight_set_error(rec, "boom \"quoted\"");
  EXPECT_EQ(flight_dump(rec, "SIGUSR2"), "");
  const fs::path file = run.path / "flight" / "rank_1.json";
  ASSERT_TRUE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file.string() + ".tmp"));
  const std::string json = read_file(file);
  for (const char* part :
       {"\"rank\":1,", "\"world_size\":2,", "\"mesh\":{\"dp\":2,", "\"coord\":{\"dp\":1,",
        "\"trigger\":\"SIGUSR2\"", "\"error\":\"boom \\\"quoted\\\"\"", "\"name\":\"world\"",
        "\"state\":\"issued\"", "\"pid\":"})
    EXPECT_TRUE(contains(json, part)) << part << " not in " << json;
  // A run directory that does not exist (a run that failed before it began) is not created.
  target.path = flight_dump_path((run.path / "missing").string(), 1);
  flight_set_target(rec, target);
  EXPECT_TRUE(contains(flight_dump(rec, "error"), "does not exist"));
  EXPECT_FALSE(fs::exists(run.path / "missing"));
}

TEST(FlightRecorder, DumperAnswersSignalsAndRequestsAndWaitingSeesTheDumps) {
  TempRunDir run;
  FlightRecorder rec(8);
  FlightDumpTarget target;
  target.path = flight_dump_path(run.path.string(), 0);
  flight_set_target(rec, target);
  std::atomic<int> signals{0};
  const fs::path file = run.path / "flight" / "rank_0.json";
  auto dumped_with = [&](const std::string& trigger) {
    for (int i = 0; i < 200; ++i) {
      if (fs::exists(file) && contains(read_file(file), trigger)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  FlightDumper dumper(rec, &signals);
  EXPECT_EQ(flight_wait_for_dumps(run.path.string(), 1, std::chrono::system_clock::now(), 0.05), 0);
  const auto asked = std::chrono::system_clock::now();
  signals.fetch_add(1);
  EXPECT_TRUE(dumped_with("\"trigger\":\"SIGUSR2\""));
  flight_request_dump(rec, "asked by rank 3 (its collective timed out)");
  EXPECT_TRUE(dumped_with("asked by rank 3"));
  EXPECT_EQ(flight_wait_for_dumps(run.path.string(), 1, asked, 1), 1);
  EXPECT_EQ(flight_wait_for_dumps(run.path.string(), 2, asked, 0.05), 1);  // rank 1 never dumps
}

TEST(FaultInjection, ParsesTheHangs) {
  FaultInjection f = parse_fault_injection("rank=1,group=tp,op=62,action=skip");
  EXPECT_EQ(f.action, FaultInjection::Action::kSkip);
  EXPECT_EQ(f.op, 62);
  EXPECT_EQ(parse_fault_injection("rank=3,group=dp_sp,op=13,action=swap").action,
            FaultInjection::Action::kSwap);
  f = parse_fault_injection("rank=0,group=world,op=2,action=hang,seconds=1.5");
  EXPECT_EQ(f.action, FaultInjection::Action::kHang);
  EXPECT_EQ(f.seconds, 1.5);
  for (const char* spec : {"rank=1,group=tp,op=*,action=skip", "rank=1,group=tp,op=*,action=hang",
                           "rank=1,group=tp,op=*,action=swap"}) {
    try {
      parse_fault_injection(spec);
      ADD_FAILURE() << "accepted \"" << spec << "\"";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), "op=K")) << e.what();
    }
  }
}

}  // namespace
}  // namespace loom
