// Automatic restarts of a training job (loom train --max-restarts N, train.max_restarts): a job
// that failed because a rank died, hung past the collective timeout or lost its node is started
// again from its newest checkpoint, up to N times, waiting 1, 2, 4 ... (at most 60) seconds
// between tries; an error a rank reported (config, data, files) is not retried, nor a stop asked
// for. Each restart is logged with its cause in train.log, and by the resumed run in
// metrics.jsonl (core/trainer.h, TrainOptions::restart).
//
//   int status = loom::run_with_restarts(max_restarts, run_dir, [&](int restart,
//       const std::string& cause) { loom::JobEnd end; ...run_job...; return end; });
#pragma once
#include <functional>
#include <string>

namespace loom {

// Exit statuses of loom train (docs/launching.md, "Exit status"), besides 0 and 1 (an error loom
// reported).
constexpr int kExitRankError = 65;    // a rank of a job reported an error (loom train says 1)
constexpr int kExitStopped = 75;      // stopped after a step with a checkpoint (--resume goes on)
constexpr int kExitCommFailure = 76;  // a rank's communication failed (timeout, lost peer)

// Why a job that ended with `status` failed, for the restart log; "" when a restart would not
// help or was not wanted: it succeeded, stopped on request, a rank reported an error, or this
// process received `received_signal` (SIGINT, SIGTERM, SIGHUP, SIGQUIT; 0: none).
std::string restart_cause(int status, int received_signal);

// How a job ended: its exit status, and the last SIGINT, SIGTERM, SIGHUP or SIGQUIT this process
// received while it ran (0: none; JobOptions::received_signal).
struct JobEnd {
  int status = 0;
  int received_signal = 0;
};

// Runs attempt(0, "") and, while it fails for a restart_cause and fewer than max_restarts
// restarts were made, attempt(k, cause) after the backoff, logging each restart (on the
// terminal, and in run_dir/train.log when the run has one). Returns the last attempt's status,
// kExitRankError turned into 1. Before a restart LOOM_FAULT is removed from the environment
// (fault injection applies to the first attempt only).
int run_with_restarts(int max_restarts, const std::string& run_dir,
                      const std::function<JobEnd(int restart, const std::string& cause)>& attempt);

}  // namespace loom
