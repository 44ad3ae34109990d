#include "launcher/restarts.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "core/run_dir.h"
#include "launcher/train_signals.h"

namespace loom {

std::string restart_cause(int status, int received_signal) {
  if (status == 0 || status == kExitStopped || status == kExitRankError) return "";
  if (received_signal != 0) return "";  // stopped by the user or the scheduler: no restart
  if (status == kExitCommFailure)
    return "a rank's communication failed (a collective timed out or a peer was lost; the "
           "ranks' messages above say which)";
  if (status > 128 && status < 128 + 65)
    return std::string("a rank was killed by ") + signal_name(status - 128) + " (status " +
           std::to_string(status) + ")";
  return "the launcher ended with status " + std::to_string(status) +
         " (a node lost, or the launcher failed)";
}

int run_with_restarts(int max_restarts, const std::string& run_dir,
                      const std::function<JobEnd(int restart, const std::string& cause)>& attempt) {
  std::string cause;
  for (int restart = 0;; ++restart) {
    const JobEnd end = attempt(restart, cause);
    const int status = end.status == kExitRankError ? 1 : end.status;
    cause = restart_cause(end.status, end.received_signal);
    if (cause.empty() || restart >= max_restarts) {
      if (!cause.empty() && max_restarts > 0)
        std::cerr << "loom: the job failed again (" << cause << ") after "
                  << counted(max_restarts, "automatic restart") << " (--max-restarts); giving up"
                  << std::endl;
      return status;
    }
    const double wait_s = std::min(60.0, static_cast<double>(1 << std::min(restart, 6)));
    const std::string line = format(
        "loom: the job failed: %s; automatic restart %d of %d from the newest checkpoint in %.0f s",
        cause.c_str(), restart + 1, max_restarts, wait_s);
    std::error_code ec;
    if (std::filesystem::is_directory(run_dir, ec)) {
      RunLog log(std::filesystem::path(run_dir) / "train.log", false, true, "");
      log.line(line);
    } else {
      std::cout << line << std::endl;
    }
    if (restart == 0) unsetenv("LOOM_FAULT");  // injected faults belong to the first attempt
    std::this_thread::sleep_for(std::chrono::duration<double>(wait_s));
  }
}

}  // namespace loom
