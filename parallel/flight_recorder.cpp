#include "parallel/flight_recorder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "base/json_text.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

// How often the dumper looks at the signal counter.
constexpr auto kDumperPoll = std::chrono::milliseconds(50);

const char* type_name(DataType type) { return data_type_name(type); }

void append_field(std::string& out, const char* key, const std::string& value) {
  out.append("\"").append(key).append("\":");
  out += json_quote(value);
}

void append_field(std::string& out, const char* key, long long value) {
  out.append("\"").append(key).append("\":").append(std::to_string(value));
}

// Unix seconds with microseconds.
void append_time(std::string& out, const char* key, double unix_s) {
  char text[48];
  std::snprintf(text, sizeof(text), "\"%s\":%.6f", key, unix_s);
  out += text;
}

void append_phase(std::string& out, const FlightPhase& phase) {
  out += "{";
  append_field(out, "step", phase.step);
  out += ",";
  append_field(out, "name", phase.name);
  out += ",";
  append_field(out, "micro", phase.micro);
  out += ",";
  append_field(out, "chunk", phase.chunk);
  out += "}";
}

void append_numbers(std::string& out, const char* key, const auto& numbers) {
  out.append("\"").append(key).append("\":[");
  for (size_t i = 0; i < numbers.size(); ++i)
    out.append(i ? "," : "").append(std::to_string(numbers[i]));
  out += "]";
}

// Converts steady-clock times into Unix seconds, from one reading of both clocks.
struct UnixTime {
  FlightClock::time_point steady = FlightClock::now();
  double unix_s =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  double of(FlightClock::time_point t) const {
    if (t == FlightClock::time_point{}) return 0;
    return unix_s - std::chrono::duration<double>(steady - t).count();
  }
};

void append_entry(std::string& out, const FlightEntry& e, const FlightGroup& g,
                  const UnixTime& now) {
  out += "{";
  append_field(out, "id", static_cast<long long>(e.id));
  out += ",";
  append_field(out, "group", e.group);
  out += ",";
  append_field(out, "index", e.index);
  if (e.seq >= 0) {
    out += ",";
    append_field(out, "seq", e.seq);
  }
  out += ",";
  append_field(out, "op", flight_op_name(e.info.op));
  out += ",";
  append_field(out, "dtype", type_name(e.info.type));
  if (e.info.reduce) {
    out += ",";
    append_field(out, "reduce", reduce_op_name(*e.info.reduce));
  }
  out += ",";
  append_field(out, "count", static_cast<long long>(e.info.count));
  out += ",";
  append_field(out, "bytes", static_cast<long long>(e.info.count * data_type_size(e.info.type)));
  if (e.info.peer >= 0 && e.info.peer < static_cast<int>(g.ranks.size())) {
    out += ",";
    append_field(out, "peer", g.ranks[e.info.peer]);
  }
  if (e.pair_seq >= 0) {
    out += ",";
    append_field(out, "pair_seq", e.pair_seq);
  }
  out += ",";
  append_field(out, "state", flight_state_name(e.state));
  out += ",";
  append_time(out, "issued_unix", now.of(e.issued));
  out += ",";
  append_time(out, "started_unix", now.of(e.started));
  out += ",";
  append_time(out, "finished_unix", now.of(e.finished));
  out += ",\"phase\":";
  append_phase(out, e.phase);
  out += "}";
}

void append_group(std::string& out, const FlightGroup& g) {
  out += "{";
  append_field(out, "name", g.name);
  out += ",";
  append_numbers(out, "ranks", g.ranks);
  out += ",";
  append_field(out, "operations", g.operations);
  out += ",";
  append_field(out, "collectives", g.collectives);
  out += ",";
  append_field(out, "completed", g.completed);
  out += ",";
  append_numbers(out, "sent", g.sent);
  out += ",";
  append_numbers(out, "received", g.received);
  out += "}";
}

FlightEntry* find_entry(FlightRecorder& rec, uint64_t id) {
  if (rec.ring.empty()) return nullptr;
  FlightEntry& e = rec.ring[id % rec.ring.size()];
  return e.id == id && e.group >= 0 ? &e : nullptr;
}

std::string hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

}  // namespace

const char* flight_op_name(FlightOp op) {
  switch (op) {
    case FlightOp::kAllReduce:
      return "all_reduce";
    case FlightOp::kReduceScatter:
      return "reduce_scatter";
    case FlightOp::kAllGather:
      return "all_gather";
    case FlightOp::kBroadcast:
      return "broadcast";
    case FlightOp::kSend:
      return "send";
    case FlightOp::kRecv:
      return "recv";
    case FlightOp::kBarrier:
      return "barrier";
    case FlightOp::kAllToAll:
      return "all_to_all";
  }
  LOOM_CHECK(false);
}

const char* flight_state_name(FlightState state) {
  switch (state) {
    case FlightState::kIssued:
      return "issued";
    case FlightState::kStarted:
      return "started";
    case FlightState::kCompleted:
      return "completed";
    case FlightState::kFailed:
      return "failed";
    case FlightState::kTimedOut:
      return "timed_out";
  }
  LOOM_CHECK(false);
}

FlightRecorder::FlightRecorder(size_t capacity) : ring(capacity) { LOOM_CHECK(capacity > 0); }

int flight_add_group(FlightRecorder& rec, const std::string& name, const std::vector<int>& ranks) {
  std::lock_guard lock(rec.mutex);
  FlightGroup g;
  g.name = name;
  g.ranks = ranks;
  g.sent.assign(ranks.size(), 0);
  g.received.assign(ranks.size(), 0);
  rec.groups.push_back(std::move(g));
  return static_cast<int>(rec.groups.size()) - 1;
}

uint64_t flight_issue(FlightRecorder& rec, int group, long index, const FlightOpInfo& info) {
  const FlightClock::time_point now = FlightClock::now();
  std::lock_guard lock(rec.mutex);
  LOOM_CHECK(group >= 0 && group < static_cast<int>(rec.groups.size()));
  FlightGroup& g = rec.groups[group];
  FlightEntry& e = rec.ring[rec.next_id % rec.ring.size()];
  e = FlightEntry{};
  e.id = rec.next_id++;
  e.group = group;
  e.index = index;
  e.info = info;
  e.issued = now;
  e.phase = rec.phase;
  g.operations = std::max(g.operations, index + 1);
  const bool pair = info.op == FlightOp::kSend || info.op == FlightOp::kRecv;
  if (!pair)
    e.seq = g.collectives++;
  else if (info.peer >= 0 && info.peer < static_cast<int>(g.ranks.size()))
    e.pair_seq = (info.op == FlightOp::kSend ? g.sent : g.received)[info.peer]++;
  return e.id;
}

void flight_start(FlightRecorder& rec, uint64_t id) {
  const FlightClock::time_point now = FlightClock::now();
  std::lock_guard lock(rec.mutex);
  if (FlightEntry* e = find_entry(rec, id); e && e->state == FlightState::kIssued) {
    e->state = FlightState::kStarted;
    e->started = now;
  }
}

void flight_finish(FlightRecorder& rec, uint64_t id, FlightState state) {
  LOOM_CHECK(state == FlightState::kCompleted || state == FlightState::kFailed ||
             state == FlightState::kTimedOut);
  const FlightClock::time_point now = FlightClock::now();
  std::lock_guard lock(rec.mutex);
  // An operation that outlived its place in the ring is not counted (the ring holds far more
  // than are ever in flight). Finishing twice (a failure after completion) is ignored.
  FlightEntry* e = find_entry(rec, id);
  if (!e) return;
  if (e->state == FlightState::kCompleted || e->state == FlightState::kFailed ||
      e->state == FlightState::kTimedOut)
    return;
  e->state = state;
  e->finished = now;
  if (state == FlightState::kCompleted && e->seq >= 0) ++rec.groups[e->group].completed;
}

void flight_step(FlightRecorder* rec, long step, const char* name) {
  if (!rec) return;
  std::lock_guard lock(rec->mutex);
  rec->phase = {step, name, -1, -1};
}

void flight_phase(FlightRecorder* rec, const char* name, int micro, int chunk) {
  if (!rec) return;
  std::lock_guard lock(rec->mutex);
  rec->phase.name = name;
  rec->phase.micro = micro;
  rec->phase.chunk = chunk;
}

void flight_set_target(FlightRecorder& rec, const FlightDumpTarget& target) {
  std::lock_guard lock(rec.mutex);
  rec.target = target;
}

void flight_set_error(FlightRecorder& rec, const std::string& error) {
  std::lock_guard lock(rec.mutex);
  if (rec.error.empty()) rec.error = error;
}

std::string flight_dump_json(const FlightRecorder& rec, const std::string& trigger) {
  // A copy, so that the backends' progress threads wait for a memcpy, not for the formatting.
  UnixTime now;
  FlightPhase phase;
  std::vector<FlightGroup> groups;
  std::vector<FlightEntry> ring;
  uint64_t next_id = 0;
  FlightDumpTarget target;
  std::string error;
  {
    std::lock_guard lock(rec.mutex);
    now = UnixTime{};
    phase = rec.phase;
    groups = rec.groups;
    ring = rec.ring;
    next_id = rec.next_id;
    target = rec.target.value_or(FlightDumpTarget{});
    error = rec.error;
  }
  std::string out = "{";
  append_field(out, "version", 1);
  out += ",";
  append_field(out, "rank", target.rank);
  out += ",";
  append_field(out, "world_size", target.world_size);
  out += ",\"mesh\":{";
  const char* axes[] = {"dp", "pp", "sp", "tp"};
  for (int a = 0; a < 4; ++a) {
    out += a ? "," : "";
    append_field(out, axes[a], target.mesh[a]);
  }
  out += "},\"coord\":{";
  for (int a = 0; a < 4; ++a) {
    out += a ? "," : "";
    append_field(out, axes[a], target.coord[a]);
  }
  out += "},";
  append_field(out, "hostname", hostname());
  out += ",";
  append_field(out, "pid", static_cast<long long>(getpid()));
  out += ",";
  append_time(out, "time_unix", now.unix_s);
  out += ",";
  append_field(out, "trigger", trigger);
  if (!error.empty()) {
    out += ",";
    append_field(out, "error", error);
  }
  out += ",\"phase\":";
  append_phase(out, phase);
  out += ",";
  append_field(out, "capacity", static_cast<long long>(ring.size()));
  out += ",";
  append_field(out, "recorded", static_cast<long long>(next_id));
  out += ",\"groups\":[";
  for (size_t i = 0; i < groups.size(); ++i) {
    out += i ? "," : "";
    append_group(out, groups[i]);
  }
  out += "],\"entries\":[";
  const uint64_t first = next_id > ring.size() ? next_id - ring.size() : 0;
  for (uint64_t id = first; id < next_id; ++id) {
    out += id > first ? "," : "";
    append_entry(out, ring[id % ring.size()], groups[ring[id % ring.size()].group], now);
  }
  out += "]}\n";
  return out;
}

std::string flight_dump(FlightRecorder& rec, const std::string& trigger) {
  std::lock_guard dumping(rec.dump_mutex);
  std::string path;
  {
    std::lock_guard lock(rec.mutex);
    if (!rec.target) return "no dump target yet (the run directory is not known)";
    path = rec.target->path;
  }
  try {
    const std::string json = flight_dump_json(rec, trigger);
    // Only the flight folder is made: a run that failed before its directory existed (a config
    // or memory check) leaves none behind.
    const fs::path folder = fs::path(path).parent_path();
    std::error_code ec;
    if (!fs::is_directory(folder.parent_path(), ec))
      return "the run directory " + folder.parent_path().string() + " does not exist yet";
    fs::create_directory(folder, ec);
    if (ec) return "cannot create " + folder.string() + ": " + ec.message();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) return "cannot write " + tmp + ": " + std::strerror(errno);
      out << json;
      if (!out.flush()) return "cannot write " + tmp + ": " + std::strerror(errno);
    }
    fs::rename(tmp, path, ec);
    if (ec) return "cannot rename " + tmp + " to " + path + ": " + ec.message();
  } catch (const std::exception& e) {
    return std::string("cannot write the flight dump: ") + e.what();
  }
  return "";
}

void flight_request_dump(FlightRecorder& rec, const std::string& reason) {
  {
    std::lock_guard lock(rec.mutex);
    rec.request_reason = reason;
    ++rec.requests;
  }
  rec.requested.notify_all();
}

std::string flight_dump_dir(const std::string& run_dir) { return run_dir + "/flight"; }

std::string flight_dump_path(const std::string& run_dir, int rank) {
  return flight_dump_dir(run_dir) + "/rank_" + std::to_string(rank) + ".json";
}

int flight_wait_for_dumps(const std::string& run_dir, int world_size,
                          std::chrono::system_clock::time_point since, double seconds) {
  const auto deadline = FlightClock::now() + std::chrono::duration_cast<FlightClock::duration>(
                                                 std::chrono::duration<double>(seconds));
  const double since_s = std::chrono::duration<double>(since.time_since_epoch()).count();
  std::vector<bool> seen(world_size, false);
  for (int missing = world_size;;) {
    for (int r = 0; r < world_size; ++r) {
      if (seen[r]) continue;
      struct stat st {};
      if (stat(flight_dump_path(run_dir, r).c_str(), &st) != 0) continue;
      const double written = st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
      // File systems keep coarse times; allow for a tick.
      if (written + 0.01 >= since_s) {
        seen[r] = true;
        --missing;
      }
    }
    if (missing == 0 || FlightClock::now() >= deadline) return world_size - missing;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

FlightDumper::FlightDumper(FlightRecorder& rec, const std::atomic<int>* signal_count)
    : rec_(rec), signal_count_(signal_count), thread_([this] { run(); }) {}

FlightDumper::~FlightDumper() {
  {
    std::lock_guard lock(rec_.mutex);
    stop_ = true;
  }
  rec_.requested.notify_all();
  thread_.join();
}

void FlightDumper::run() {
  int signals_seen = signal_count_ ? signal_count_->load() : 0;
  long requests_seen = rec_.requests.load();
  for (;;) {
    std::string trigger;
    {
      std::unique_lock lock(rec_.mutex);
      rec_.requested.wait_for(
          lock, kDumperPoll, [&] { return stop_.load() || rec_.requests.load() != requests_seen; });
      if (stop_) return;
      if (rec_.requests.load() != requests_seen) {
        requests_seen = rec_.requests.load();
        trigger = rec_.request_reason;
      }
    }
    const int signals = signal_count_ ? signal_count_->load() : 0;
    if (signals != signals_seen) {
      signals_seen = signals;
      trigger = trigger.empty() ? "SIGUSR2" : trigger + "; SIGUSR2";
    }
    if (trigger.empty()) continue;
    const std::string error = flight_dump(rec_, trigger);
    if (!error.empty()) std::fprintf(stderr, "loom: flight recorder: %s\n", error.c_str());
  }
}

}  // namespace loom
