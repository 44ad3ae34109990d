// Helpers shared by the core tests: a fresh temporary folder per test, a config from overrides,
// and the message of the loom::Error a call throws.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/config.h"

namespace loom::testing {

// A new empty folder under the system temp dir, named after the running test; removed at exit.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            (std::string("loom_") + info->test_suite_name() + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A config made of `base` overrides, then `overrides` ("path.to.field=value" each), applied to
// the schema's defaults in order.
inline config::RunConfig config_from(const std::vector<std::string>& base,
                                     const std::vector<std::string>& overrides) {
  config::RunConfig cfg;
  for (const std::string& o : base) apply_override(cfg, o);
  for (const std::string& o : overrides) apply_override(cfg, o);
  return cfg;
}

// The message of the loom::Error that f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace loom::testing
