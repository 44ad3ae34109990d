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
#include "tests/core/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::error_of;

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
