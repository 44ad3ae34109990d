// What loom reads and writes around a run: inputs that are not regular files are refused
// (base/regular_file.h), and a log line that cannot be written is an error (core/run_dir.h).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/run_dir.h"
#include "core/sample.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

TEST(RunFiles, LogTimestampIsUtcIso8601) {
  char stamp[kTimestampSize];
  log_timestamp(0, stamp);
  EXPECT_EQ(std::string(stamp, kTimestampSize), "1970-01-01T00:00:00Z ");
  log_timestamp(1796633412, stamp);  // date -u -d @1796633412
  EXPECT_EQ(std::string(stamp, kTimestampSize), "2026-12-07T08:50:12Z ");
  log_timestamp(951825600, stamp);  // a leap day
  EXPECT_EQ(std::string(stamp, kTimestampSize), "2000-02-29T12:00:00Z ");
}

TEST(RunFiles, LogLinesCarryTheTimeInTheFileOnly) {
  const testing::TempDir dir;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  {
    RunLog log(dir / "train.log", false, true, "[rank 0 dp=0 pp=0 sp=0 tp=0] ");
    log.line("step 1");
    RunLog other(dir / "other.log", false, false, "[rank 1 dp=1 pp=0 sp=0 tp=0] ");
    other.line("not printed: only the writer prints lines");
    other.warn("slow disk");
  }
  // The terminal gets rank 0's line as it is, another rank's warning with its label.
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "step 1\n");
  EXPECT_EQ(::testing::internal::GetCapturedStderr(),
            "[rank 1 dp=1 pp=0 sp=0 tp=0] warning: slow disk\n");
  std::ifstream in(dir / "train.log");
  std::string line;
  std::getline(in, line);
  ASSERT_EQ(line.size(), kTimestampSize + 6) << line;
  EXPECT_EQ(line.substr(kTimestampSize), "step 1");  // the file: the time, then the line
  EXPECT_EQ(line[10], 'T');
  EXPECT_FALSE(std::filesystem::exists(dir / "other.log"));
}

TEST(RunFiles, CountsSayTheirNounInTheRightNumber) {
  EXPECT_EQ(counted(1, "thread"), "1 thread");
  EXPECT_EQ(counted(2, "thread"), "2 threads");
  EXPECT_EQ(counted(2, "micro-batch"), "2 micro-batches");
  EXPECT_EQ(counted(1, "micro-batch"), "1 micro-batch");
  EXPECT_EQ(counted(0, "bucket"), "0 buckets");
}

TEST(RunFiles, SampleTextIsSafeForATerminalAndUtf8) {
  EXPECT_EQ(printable_text("def f():\n\treturn 1"), "def f():\n\treturn 1");
  EXPECT_EQ(printable_text("a\x1b[31mb"), "a\\x1b[31mb");  // no ESC reaches the terminal
  EXPECT_EQ(printable_text("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");  // UTF-8 stays
  EXPECT_EQ(printable_text("\xff\xc3"), "\\xff\\xc3");                                // not UTF-8
  EXPECT_EQ(printable_text("\xc2\x85\r\x7f"), "\\u0085\\x0d\\x7f");                   // C1, CR, DEL
  EXPECT_EQ(printable_text("\xed\xa0\x80"), "\\xed\\xa0\\x80");                       // a surrogate
  EXPECT_EQ(printable_text("a\xe2\x80\xae"
                           "b"),
            "a\\u202eb");  // a right-to-left override
}

TEST(RunFiles, LogLineThatCannotBeWrittenIsAnError) {
  RunLog log("/dev/full", true, true, "");  // every write: ENOSPC
  EXPECT_NE(error_of([&] { log.line("step 1"); }).find("cannot write /dev/full"),
            std::string::npos);
}

TEST(RunFiles, OnlyRegularFilesAreRead) {
  const fs::path dir = fs::temp_directory_path() / ("loom-run-files-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string fifo = (dir / "fifo").string();
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] {
              read_regular_file(fifo, 100, "hostfile");
            }).find("hostfile " + fifo + " is a FIFO, not a regular file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_regular_file(dir.string(), 100, "trace"); }).find("is a directory"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              read_regular_file("/dev/zero", 100, "flight dump");
            }).find("is a character device"),
            std::string::npos);
  std::ofstream(dir / "big") << std::string(200, 'x');
  EXPECT_NE(error_of([&] {
              read_regular_file((dir / "big").string(), 100, "hostfile");
            }).find("200 bytes, more than the 100"),
            std::string::npos);
  EXPECT_EQ(read_regular_file((dir / "big").string(), 200, "hostfile").size(), 200u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
