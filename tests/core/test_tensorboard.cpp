// TensorBoard event files (core/tensorboard.h): the CRC-32C check value, the TFRecord framing,
// and --resume's cut of an old file (after a step, at a torn record).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "core/tensorboard.h"
#include "loom.pb.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// The steps of a file's scalar events, read through the framing (lengths only).
std::vector<long> steps_in(const std::string& file) {
  std::vector<long> steps;
  for (size_t at = 0; at + 12 <= file.size();) {
    uint64_t length = 0;
    for (int i = 0; i < 8; ++i)
      length |= static_cast<uint64_t>(static_cast<unsigned char>(file[at + i])) << (8 * i);
    config::TensorBoardEvent event;
    EXPECT_TRUE(event.ParseFromString(file.substr(at + 12, length)));
    if (event.has_summary()) steps.push_back(static_cast<long>(event.step()));
    at += 16 + length;
  }
  return steps;
}

TEST(TensorBoard, Crc32cOfTheCheckStringIsTheStandardValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // CRC-32C's published check value
  EXPECT_EQ(crc32c("", 0), 0u);
  // Continuing from a prefix's CRC equals the whole string's.
  EXPECT_EQ(crc32c("6789", 4, crc32c("12345", 5)), 0xE3069283u);
}

TEST(TensorBoard, RecordFramesThePayloadWithMaskedChecksums) {
  const std::string record = tfrecord("abc");
  ASSERT_EQ(record.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(record.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
  const uint32_t crc = crc32c(record.data(), 8);
  const uint32_t masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
  EXPECT_EQ(masked_crc32c(record.data(), 8), masked);
  EXPECT_EQ(record.substr(12, 3), "abc");
}

TEST(TensorBoard, ResumeCutsAfterTheStepAndAtATornRecord) {
  const fs::path dir = fs::path(testing::TempDir()) / "loom_tensorboard_cut";
  fs::remove_all(dir);
  std::string path;
  {
    EventWriter events(dir);
    for (long step = 1; step <= 5; ++step) events.scalars(step, {{"loss", 1.0 / step}});
    events.flush();
    path = events.path();
  }
  EXPECT_EQ(steps_in(read_all(path)), (std::vector<long>{1, 2, 3, 4, 5}));
  truncate_events(dir, 3);
  EXPECT_EQ(steps_in(read_all(path)), (std::vector<long>{1, 2, 3}));
  // A record cut short by a crash (and one whose payload checksum fails) ends the file.
  const std::string whole = read_all(path);
  {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    const std::string torn = tfrecord("payload of a record the crash cut short");
    out.write(torn.data(), static_cast<std::streamsize>(torn.size() - 5));
  }
  truncate_events(dir, 10);
  EXPECT_EQ(read_all(path), whole);
  {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    std::string bad = tfrecord("x");
    bad[12] = 'y';
    out.write(bad.data(), static_cast<std::streamsize>(bad.size()));
  }
  truncate_events(dir, 10);
  EXPECT_EQ(read_all(path), whole);
  // A second writer never reuses the first one's file.
  EventWriter again(dir);
  EXPECT_NE(again.path(), path);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
