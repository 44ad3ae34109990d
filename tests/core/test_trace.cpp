#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "core/trace.h"
#include "tools/trace_view.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

using testing::error_of;
using testing::TempDir;
using Event = config::TraceFile::Event;

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Ranks of one process joined by in-memory send/recv queues: enough for trace_write's gather,
// which uses nothing else.
struct Mailboxes {
  std::mutex mutex;
  std::condition_variable ready;
  std::map<std::pair<int, int>, std::deque<std::string>> queues;  // (from, to) → messages
};

class MailboxCommunicator : public Communicator {
 public:
  MailboxCommunicator(Mailboxes& boxes, int rank, int size)
      : boxes_(boxes), rank_(rank), size_(size) {
    for (int r = 0; r < size; ++r) ranks_.push_back(r);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const std::vector<int>& global_ranks() const override { return ranks_; }
  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    std::lock_guard<std::mutex> lock(boxes_.mutex);
    boxes_.queues[{rank_, peer}].emplace_back(static_cast<const char*>(data),
                                              count * data_type_size(type));
    boxes_.ready.notify_all();
    return make_completed_work();
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    std::unique_lock<std::mutex> lock(boxes_.mutex);
    std::deque<std::string>& queue = boxes_.queues[{peer, rank_}];
    boxes_.ready.wait(lock, [&] { return !queue.empty(); });
    const std::string message = std::move(queue.front());
    queue.pop_front();
    if (message.size() != count * data_type_size(type))
      return make_completed_work("message of the wrong size");
    std::memcpy(data, message.data(), message.size());
    return make_completed_work();
  }
  WorkPtr all_reduce_async(void*, size_t, DataType, ReduceOp) override { return unused(); }
  WorkPtr reduce_scatter_async(const void*, void*, size_t, DataType, ReduceOp) override {
    return unused();
  }
  WorkPtr all_gather_async(const void*, void*, size_t, DataType) override { return unused(); }
  WorkPtr broadcast_async(void*, size_t, DataType, int) override { return unused(); }
  WorkPtr all_to_all_async(const void*, void*, size_t, DataType) override { return unused(); }
  WorkPtr barrier_async() override { return unused(); }

 private:
  static WorkPtr unused() { return make_completed_work("not used by trace_write"); }
  Mailboxes& boxes_;
  int rank_, size_;
  std::string name_ = "world";
  std::vector<int> ranks_;
};

Event span(int pid, const std::string& category, double start_us, double duration_us, int step,
           int micro = -1, int chunk = -1) {
  Event e;
  e.set_name(category);
  e.set_category(category);
  e.set_phase("X");
  e.set_start_us(start_us);
  e.set_duration_us(duration_us);
  e.set_pid(pid);
  e.set_tid(0);
  e.mutable_args()->set_step(step);
  if (micro >= 0) e.mutable_args()->set_micro(micro);
  if (chunk >= 0) e.mutable_args()->set_chunk(chunk);
  return e;
}

void add_row(config::TraceFile& trace, int pid, const std::string& label) {
  Event* e = trace.add_trace_events();
  e->set_name("process_name");
  e->set_phase("M");
  e->set_pid(pid);
  e->mutable_args()->set_name(label);
}

// Two pipeline ranks over steps 0 and 1 (1000 µs each) and a third rank with no spans:
//   rank 0: forward [0,100) micro 0, p2p_wait [100,150), backward [150,250) micro 0, all step 0;
//           forward [1000,1100) micro 3 chunk 1, step 1
//   rank 1: forward [100,200) micro 0 chunk 0, optimizer [300,400), step 0
config::TraceFile two_stage_trace() {
  config::TraceFile trace;
  add_row(trace, 0, "rank 0 (pp 0)");
  add_row(trace, 1, "rank 1 (pp 1)");
  add_row(trace, 2, "rank 2 (idle)");
  *trace.add_trace_events() = span(0, "forward", 0, 100, 0, 0);
  *trace.add_trace_events() = span(0, "p2p_wait", 100, 50, 0);
  *trace.add_trace_events() = span(0, "backward", 150, 100, 0, 0);
  *trace.add_trace_events() = span(0, "forward", 1000, 100, 1, 3, 1);
  *trace.add_trace_events() = span(1, "forward", 100, 100, 0, 0, 0);
  *trace.add_trace_events() = span(1, "optimizer", 300, 100, 0);
  return trace;
}

TEST(Trace, SpanRecordsNameCategoryStepAndTimes) {
  TraceRecorder rec;
  trace_start(rec);
  rec.step = 4;
  {
    TraceSpan span(&rec, "stage_forward", "forward", 2, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double elapsed_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - rec.origin)
          .count();
  ASSERT_EQ(rec.events.size(), 1u);
  const TraceEvent& e = rec.events[0];
  EXPECT_EQ(e.name, "stage_forward");
  EXPECT_EQ(e.category, "forward");
  EXPECT_EQ(e.step, 4);
  EXPECT_EQ(e.micro, 2);
  EXPECT_EQ(e.chunk, 1);
  EXPECT_GE(e.start_us, 0);
  EXPECT_GE(e.duration_us, 2000);
  EXPECT_LE(e.start_us + e.duration_us, elapsed_us + 0.001);
}

TEST(Trace, DisabledOrMissingRecorderRecordsNothing) {
  TraceRecorder rec;  // never started
  { TraceSpan span(&rec, "stage_forward", "forward"); }
  { TraceSpan span(nullptr, "stage_forward", "forward"); }
  EXPECT_TRUE(rec.events.empty());
}

TEST(Trace, WriteThroughSelfCommunicatorReadsBack) {
  TempDir dir;
  TraceRecorder rec;
  trace_start(rec);
  rec.step = 0;
  rec.events.push_back({"stage_forward", "forward", 10, 5, 0, 1, -1});
  rec.events.push_back({"adamw", "optimizer", 20, 3, 0, -1, -1});
  std::unique_ptr<Communicator> world = make_self_communicator("world", 0);
  trace_write(rec, *world, {"rank 0 (pp 0, dp 0, tp 0)"}, dir / "trace.json");
  EXPECT_FALSE(std::filesystem::exists(dir / "trace.json.tmp"));

  const config::TraceFile trace = trace_read(dir / "trace.json");
  EXPECT_EQ(trace.display_time_unit(), "ms");
  ASSERT_EQ(trace.trace_events_size(), 3);
  const Event& meta = trace.trace_events(0);
  EXPECT_EQ(meta.phase(), "M");
  EXPECT_EQ(meta.name(), "process_name");
  EXPECT_EQ(meta.args().name(), "rank 0 (pp 0, dp 0, tp 0)");
  const Event& forward = trace.trace_events(1);
  EXPECT_EQ(forward.phase(), "X");
  EXPECT_EQ(forward.category(), "forward");
  EXPECT_DOUBLE_EQ(forward.start_us(), 10);
  EXPECT_DOUBLE_EQ(forward.duration_us(), 5);
  EXPECT_EQ(forward.args().micro(), 1);
  EXPECT_FALSE(forward.args().has_chunk());  // −1 is left out
  EXPECT_FALSE(trace.trace_events(2).args().has_micro());
}

TEST(Trace, WriteGathersEveryRankOnRankZero) {
  TempDir dir;
  Mailboxes boxes;
  const std::vector<std::string> labels = {"rank 0", "rank 1", "rank 2"};
  auto run_rank = [&](int rank) {
    TraceRecorder rec;
    trace_start(rec);
    rec.step = 7;
    // Rank 2 recorded nothing: it still sends its (empty) part.
    for (int i = 0; rank < 2 && i < rank + 1; ++i)
      rec.events.push_back({"stage_backward", "backward", 100.0 * i, 50, 7, i, rank});
    MailboxCommunicator world(boxes, rank, 3);
    trace_write(rec, world, labels, dir / "trace.json");
  };
  std::thread rank1(run_rank, 1), rank2(run_rank, 2);
  run_rank(0);
  rank1.join();
  rank2.join();

  const config::TraceFile trace = trace_read(dir / "trace.json");
  std::map<int, int> spans_per_pid;
  std::map<int, std::string> rows;
  for (const Event& e : trace.trace_events()) {
    if (e.phase() == "M") rows[e.pid()] = e.args().name();
    if (e.phase() == "X") {
      ++spans_per_pid[e.pid()];
      EXPECT_EQ(e.args().chunk(), e.pid());  // each rank's events keep their rank's pid
    }
  }
  EXPECT_EQ(rows, (std::map<int, std::string>{{0, "rank 0"}, {1, "rank 1"}, {2, "rank 2"}}));
  EXPECT_EQ(spans_per_pid, (std::map<int, int>{{0, 1}, {1, 2}}));
}

TEST(Trace, JsonRoundTripUsesChromeNames) {
  config::TraceFile trace;
  trace.set_display_time_unit("ms");
  *trace.add_trace_events() = span(3, "backward", 1234.5, 67.25, 2, 5, 1);
  const std::string json = trace_to_json(trace);
  for (const char* key : {"\"traceEvents\":", "\"displayTimeUnit\":\"ms\"", "\"cat\":\"backward\"",
                          "\"ph\":\"X\"", "\"ts\":1234.5", "\"dur\":67.25", "\"pid\":3",
                          "\"args\":{\"step\":2,\"micro\":5,\"chunk\":1}"})
    EXPECT_NE(json.find(key), std::string::npos) << key << " not in " << json;

  config::TraceFile back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(trace, back));
}

TEST(Trace, ReadIgnoresOtherToolsFieldsAndNamesBadFiles) {
  TempDir dir;
  write_text(dir / "chrome.json",
             R"({"traceEvents":[{"name":"f","cat":"forward","ph":"X","ts":1,"dur":2,"pid":0,)"
             R"("tid":5,"id":"0x1","args":{"step":0,"note":"x"}}],"otherData":{"v":1}})");
  EXPECT_EQ(trace_read(dir / "chrome.json").trace_events(0).duration_us(), 2);

  EXPECT_NE(error_of([&] { trace_read(dir / "absent.json"); }).find(dir / "absent.json"),
            std::string::npos);
  write_text(dir / "cut.json", R"({"traceEvents":[{"name":"f","ph")");
  const std::string corrupt = error_of([&] { trace_read(dir / "cut.json"); });
  EXPECT_NE(corrupt.find(dir / "cut.json"), std::string::npos) << corrupt;
}

TEST(Trace, WindowCoversTheChosenSteps) {
  const config::TraceFile trace = two_stage_trace();
  const TraceWindow all = trace_window(trace, -1, -1);
  EXPECT_DOUBLE_EQ(all.from_us, 0);
  EXPECT_DOUBLE_EQ(all.to_us, 1100);
  const TraceWindow step0 = trace_window(trace, 0, 0);
  EXPECT_DOUBLE_EQ(step0.to_us, 400);
  const std::string none = error_of([&] { trace_window(trace, 5, 6); });
  EXPECT_NE(none.find("holds steps 0-1"), std::string::npos) << none;
}

TEST(Trace, SvgHasARowPerRankAndABarPerSpanInTheWindow) {
  const config::TraceFile trace = two_stage_trace();
  const std::string all = trace_svg(trace, trace_window(trace, -1, -1));
  EXPECT_EQ(count_of(all, "class=\"row\""), 3u);
  EXPECT_EQ(count_of(all, "class=\"event\""), 6u);
  EXPECT_NE(all.find(">rank 2 (idle)</text>"), std::string::npos);
  EXPECT_NE(all.find(">3c1</text>"), std::string::npos);         // micro 3 of chunk 1
  EXPECT_NE(all.find("central\">0</text>"), std::string::npos);  // chunk 0: no suffix

  const std::string step0 = trace_svg(trace, trace_window(trace, 0, 0));
  EXPECT_EQ(count_of(step0, "class=\"row\""), 3u);
  EXPECT_EQ(count_of(step0, "class=\"event\""), 5u);  // step 1's forward is outside
  EXPECT_EQ(step0.find(">3c1</text>"), std::string::npos);
  EXPECT_NE(step0.find(">optimizer</text>"), std::string::npos);  // in the legend
  EXPECT_EQ(count_of(step0, "fill=\"#e15759\""), 2u);  // p2p_wait: legend swatch and its bar
}

TEST(Trace, WaitCountsEveryCommunicationWaitOnce) {
  // A tp-2 Ladder rank: tp_wait inside forward and backward, an sp exchange, a dp reduction with
  // a replica reduction nested in it; over a 1000 µs span, 450 µs of it waiting.
  config::TraceFile trace;
  add_row(trace, 0, "rank 0 (tp 0)");
  *trace.add_trace_events() = span(0, "forward", 0, 400, 0, 0);
  *trace.add_trace_events() = span(0, "tp_wait", 100, 100, 0);
  *trace.add_trace_events() = span(0, "sp_wait", 300, 50, 0);
  *trace.add_trace_events() = span(0, "backward", 400, 400, 0, 0);
  *trace.add_trace_events() = span(0, "tp_wait", 500, 100, 0);
  *trace.add_trace_events() = span(0, "dp_reduce", 800, 200, 0);
  *trace.add_trace_events() = span(0, "replica_reduce", 850, 100, 0);
  const TraceRankSummary r = trace_summary(trace, trace_window(trace, 0, 0))[0];
  EXPECT_DOUBLE_EQ(r.span_us, 1000);
  EXPECT_DOUBLE_EQ(r.busy_us.at("tp_wait"), 200);
  EXPECT_DOUBLE_EQ(r.busy_us.at("replica_reduce"), 100);
  EXPECT_DOUBLE_EQ(r.wait_us, 450);
  EXPECT_DOUBLE_EQ(r.wait_fraction, 0.45);
  for (const char* c :
       {"p2p_wait", "tp_wait", "sp_wait", "dp_reduce", "replica_reduce", "sum_wait", "zero_gather"})
    EXPECT_TRUE(trace_is_wait(c)) << c;
  for (const char* c : {"forward", "backward", "optimizer", "recompute"})
    EXPECT_FALSE(trace_is_wait(c)) << c;
}

TEST(Trace, SummarySumsCategoriesAndTheWaitFraction) {
  const config::TraceFile trace = two_stage_trace();
  const std::vector<TraceRankSummary> step0 = trace_summary(trace, trace_window(trace, 0, 0));
  ASSERT_EQ(step0.size(), 3u);
  EXPECT_EQ(step0[0].label, "rank 0 (pp 0)");
  EXPECT_DOUBLE_EQ(step0[0].span_us, 250);
  EXPECT_DOUBLE_EQ(step0[0].busy_us.at("forward"), 100);
  EXPECT_DOUBLE_EQ(step0[0].busy_us.at("backward"), 100);
  EXPECT_DOUBLE_EQ(step0[0].wait_fraction, 0.2);
  EXPECT_DOUBLE_EQ(step0[1].span_us, 300);
  EXPECT_DOUBLE_EQ(step0[1].wait_fraction, 0);
  EXPECT_DOUBLE_EQ(step0[2].span_us, 0);
  // Choosing steps leaves out another step's spans inside the same time.
  EXPECT_DOUBLE_EQ(trace_summary(trace, {0, 2000, 0, 0})[0].busy_us.at("forward"), 100);
  EXPECT_DOUBLE_EQ(trace_summary(trace, {0, 2000})[0].busy_us.at("forward"), 200);

  // A window cutting a span counts only the part inside it.
  const std::vector<TraceRankSummary> cut = trace_summary(trace, {50, 175});
  EXPECT_DOUBLE_EQ(cut[0].busy_us.at("forward"), 50);
  EXPECT_DOUBLE_EQ(cut[0].busy_us.at("backward"), 25);
  EXPECT_DOUBLE_EQ(cut[0].span_us, 125);
  EXPECT_EQ(trace_categories(trace, {50, 175}),
            (std::vector<std::string>{"forward", "backward", "p2p_wait"}));
}

}  // namespace
}  // namespace loom
