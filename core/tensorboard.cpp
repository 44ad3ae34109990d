#include "core/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/run_dir.h"
#include "loom.pb.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

constexpr std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = crc32c_table();

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t get_u32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Where the first record to drop starts: one after last_step, or one cut short or failing its
// checksum; the file's size when there is none.
size_t keep_bytes(const std::string& file, long last_step) {
  size_t at = 0;
  while (at < file.size()) {
    if (file.size() - at < 12) return at;
    uint64_t length = 0;
    for (int i = 0; i < 8; ++i)
      length |= static_cast<uint64_t>(static_cast<unsigned char>(file[at + i])) << (8 * i);
    if (get_u32(file, at + 8) != masked_crc32c(file.data() + at, 8) ||
        length > file.size() - at - 16)
      return at;
    const std::string payload = file.substr(at + 12, length);
    if (get_u32(file, at + 12 + length) != masked_crc32c(payload.data(), payload.size())) return at;
    config::TensorBoardEvent event;
    if (!event.ParseFromString(payload)) return at;
    if (event.has_summary() && event.step() > last_step) return at;
    at += 16 + length;
  }
  return at;
}

}  // namespace

uint32_t crc32c(const void* data, size_t bytes, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < bytes; ++i) crc = kCrc32cTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t bytes) {
  const uint32_t crc = crc32c(data, bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& payload) {
  std::string record;
  const uint64_t length = payload.size();
  for (int i = 0; i < 8; ++i) record += static_cast<char>((length >> (8 * i)) & 0xff);
  put_u32(record, masked_crc32c(record.data(), 8));
  record += payload;
  put_u32(record, masked_crc32c(payload.data(), payload.size()));
  return record;
}

EventWriter::EventWriter(const fs::path& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) throw Error("cannot create " + dir.string() + ": " + error.message());
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const std::string stem = "events.out.tfevents." +
                           std::to_string(static_cast<long long>(unix_seconds())) + "." + host +
                           "." + std::to_string(static_cast<long>(getpid()));
  path_ = (dir / stem).string();
  for (int k = 1; fs::exists(fs::symlink_status(path_, error)); ++k)
    path_ = (dir / (stem + "." + std::to_string(k))).string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw_write_error(path_);
  config::TensorBoardEvent version;
  version.set_wall_time(unix_seconds());
  version.set_file_version("brain.Event:2");
  write(version.SerializeAsString());
  flush();
}

void EventWriter::scalars(long step, const Scalars& values) {
  config::TensorBoardEvent event;
  event.set_wall_time(unix_seconds());
  event.set_step(step);
  config::TensorBoardSummary* summary = event.mutable_summary();
  for (const auto& [tag, value] : values) {
    if (!std::isfinite(value)) continue;
    config::TensorBoardSummary::Value* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  write(event.SerializeAsString());
}

void EventWriter::write(const std::string& payload) {
  const std::string record = tfrecord(payload);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
}

void EventWriter::flush() {
  if (!out_.flush()) throw_write_error(path_);
}

void truncate_events(const fs::path& dir, long last_step) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) return;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.find("tfevents") == std::string::npos) continue;
    const std::string file =
        read_regular_file(entry.path().string(), size_t{4} << 30, "TensorBoard event file");
    const size_t keep = keep_bytes(file, last_step);
    if (keep == file.size()) continue;
    fs::resize_file(entry.path(), keep, error);
    if (error)
      throw Error("cannot cut " + entry.path().string() + " after step " +
                  std::to_string(last_step) + ": " + error.message());
  }
}

}  // namespace loom
