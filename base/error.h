// The two kinds of failure (docs/architecture.md, "Failure handling").
//
// loom::Error: something a user caused or a system suffered (bad config, missing file, corrupt
// shard, non-finite loss). Its message names the thing and says what to do; the CLI prints it and
// exits non-zero.
// LOOM_CHECK(cond): a broken internal invariant. Prints the expression, file and line and aborts.
//
//   if (!file) throw loom::Error("cannot open shard " + path + ": " + std::strerror(errno));
//   LOOM_CHECK(offset + n <= size);
#pragma once
#include <stdexcept>
#include <string>

namespace loom {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void check_failed(const char* expression, const char* file, int line);

}  // namespace loom

#define LOOM_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : ::loom::check_failed(#cond, __FILE__, __LINE__))
