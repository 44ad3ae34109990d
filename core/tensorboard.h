// TensorBoard event files (logging.tensorboard; docs/architecture.md, "Watching a run").
//
// A file is a sequence of TFRecords: the payload's length (uint64, little-endian), the masked
// CRC-32C of those 8 bytes, the payload, the masked CRC-32C of the payload. Each payload is a
// TensorBoardEvent (configs/loom.proto: TensorFlow's Event with its field numbers): first the
// file version, then one event per step holding that step's scalars.
//
//   loom::EventWriter events(run_dir / "tensorboard");
//   events.scalars(step, {{"loss", 3.2}, {"lr", 3e-4}});
//   events.flush();                                    // every logging interval
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace loom {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `bytes`, continuing from `crc`.
uint32_t crc32c(const void* data, size_t bytes, uint32_t crc = 0);
// The TFRecord checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t bytes);

// One TFRecord around `payload`.
std::string tfrecord(const std::string& payload);

using Scalars = std::vector<std::pair<std::string, double>>;

class EventWriter {
 public:
  // Creates `dir` and a new file in it, events.out.tfevents.SECONDS.HOST.PID (never one that
  // exists), starting with the file-version record.
  explicit EventWriter(const std::filesystem::path& dir);
  // One event at `step` with a simple value per scalar (non-finite values are skipped: TensorBoard
  // draws no point for them). Buffered until flush().
  void scalars(long step, const Scalars& values);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write(const std::string& payload);
  std::string path_;
  std::ofstream out_;
};

// --resume at `last_step`: cuts each event file in `dir` before its first event after
// last_step (and before a record cut short or failing its checksum), so that no step appears
// twice once the resumed run writes its own file. A missing `dir` is left alone.
void truncate_events(const std::filesystem::path& dir, long last_step);

}  // namespace loom
