#include "core/trace.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "base/error.h"

namespace loom {
namespace {

using Event = config::TraceFile::Event;

double microseconds(std::chrono::steady_clock::duration d) {
  // Nanosecond resolution is all a steady clock gives; rounding keeps the JSON numbers short.
  return std::round(std::chrono::duration<double, std::micro>(d).count() * 1000.0) / 1000.0;
}

Event event_to_proto(const TraceEvent& e, int pid) {
  Event out;
  out.set_name(e.name);
  out.set_category(e.category);
  out.set_phase("X");
  out.set_start_us(e.start_us);
  out.set_duration_us(e.duration_us);
  out.set_pid(pid);
  out.set_tid(0);
  // Unset fields are left out of the JSON, so "not applicable" (−1) never shows as a value.
  if (e.step >= 0) out.mutable_args()->set_step(e.step);
  if (e.micro >= 0) out.mutable_args()->set_micro(e.micro);
  if (e.chunk >= 0) out.mutable_args()->set_chunk(e.chunk);
  return out;
}

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot write trace " + tmp + ": " + std::strerror(errno));
    out << text << "\n";
    if (!out.flush())
      throw Error("cannot write trace " + tmp + ": " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename " + tmp + " to " + path + ": " + ec.message());
}

}  // namespace

void trace_start(TraceRecorder& rec) {
  rec.origin = std::chrono::steady_clock::now();
  rec.enabled = true;
}

void trace_record(TraceRecorder& rec, const char* name, const char* category,
                  std::chrono::steady_clock::time_point start,
                  std::chrono::steady_clock::time_point end, int micro, int chunk) {
  rec.events.push_back({name, category, microseconds(start - rec.origin), microseconds(end - start),
                        rec.step, micro, chunk});
}

void trace_write(const TraceRecorder& rec, Communicator& world,
                 const std::vector<std::string>& labels, const std::string& path) {
  config::TraceFile mine;
  for (const TraceEvent& e : rec.events) *mine.add_trace_events() = event_to_proto(e, world.rank());
  if (world.rank() != 0) {
    std::string bytes;
    LOOM_CHECK(mine.SerializeToString(&bytes));
    const int64_t n = static_cast<int64_t>(bytes.size());
    world.send(&n, 1, DataType::kInt64, 0);
    if (n > 0) world.send(bytes.data(), bytes.size(), DataType::kByte, 0);
    return;
  }
  LOOM_CHECK(labels.size() == static_cast<size_t>(world.size()));
  config::TraceFile trace;
  trace.set_display_time_unit("ms");
  for (int r = 0; r < world.size(); ++r) {
    Event* meta = trace.add_trace_events();
    meta->set_name("process_name");
    meta->set_phase("M");
    meta->set_pid(r);
    meta->set_tid(0);
    meta->mutable_args()->set_name(labels[r]);
  }
  trace.MergeFrom(mine);
  for (int r = 1; r < world.size(); ++r) {
    int64_t n = 0;
    world.recv(&n, 1, DataType::kInt64, r);
    LOOM_CHECK(n >= 0);
    if (n == 0) continue;
    std::string bytes(static_cast<size_t>(n), '\0');
    world.recv(bytes.data(), bytes.size(), DataType::kByte, r);
    config::TraceFile theirs;
    LOOM_CHECK(theirs.ParseFromString(bytes));
    trace.MergeFrom(theirs);
  }
  write_file_atomically(path, trace_to_json(trace));
}

std::string trace_to_json(const config::TraceFile& trace) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = false;
  const auto status = google::protobuf::util::MessageToJsonString(trace, &json, options);
  LOOM_CHECK(status.ok());
  return json;
}

}  // namespace loom
