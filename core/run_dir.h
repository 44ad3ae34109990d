// A run directory on disk and the terminal: the log (train.log, mirrored on the terminal),
// creating or resuming a run directory, choosing the checkpoint to resume from, and metrics
// lines (metrics.jsonl). What train() (core/trainer.cpp) needs besides the training itself.
//
//   loom::RunLog log(dir / "train.log", quiet, rank == 0, "[rank 3 ...] ");
//   loom::prepare_run_dir(dir, resume);
//   log.line(loom::format("step %ld", step));
#pragma once
#include <atomic>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "base/names.h"
#include "core/checkpoint.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/rank_health.h"
#include "core/train_step.h"
#include "loom.pb.h"

namespace loom {

// Throws loom::Error: a run file (train.log, metrics.jsonl) could not be written.
[[noreturn]] void throw_write_error(const std::string& path);

// The UTC time `seconds` after the epoch as "2026-12-07T07:30:12Z " (with the space, no NUL),
// into `out`: what starts every train.log line. Async-signal-safe (no locale, no allocation),
// for a signal handler's last line too.
constexpr size_t kTimestampSize = 21;
void log_timestamp(int64_t seconds, char (&out)[kTimestampSize]);

// Terminal lines, mirrored into run_dir/train.log with a timestamp each. Rank 0 writes the log
// and prints progress, without a label; other ranks print warnings only, on stderr, after their
// `prefix` (the rank's label). A line the log cannot take (its disk full) is an error: nothing is
// dropped silently.
class RunLog {
 public:
  RunLog(const std::filesystem::path& path, bool quiet, bool writer, std::string prefix)
      : path_(path.string()), quiet_(quiet), writer_(writer), prefix_(std::move(prefix)) {
    if (writer_) file_.open(path, std::ios::app);
    if (writer_ && !file_) throw_write_error(path_);
  }
  void line(const std::string& text) {
    if (!writer_) return;
    if (!quiet_) std::cout << text << std::endl;
    char stamp[kTimestampSize];
    log_timestamp(std::time(nullptr), stamp);
    file_.write(stamp, kTimestampSize) << text << '\n';
    if (!file_.flush()) throw_write_error(path_);
  }
  void warn(const std::string& text) {
    if (writer_) return line("warning: " + text);
    if (!quiet_) std::cerr << prefix_ << "warning: " << text << std::endl;
  }

 private:
  std::string path_;
  std::ofstream file_;
  bool quiet_, writer_;
  std::string prefix_;
};

// printf into a std::string (at most 511 characters).
std::string format(const char* fmt, auto... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer), fmt, args...);
  return buffer;
}

// "SIGTERM", "SIGUSR1", ... ("a signal" for others); async-signal-safe (a static string).
const char* signal_name(int sig);

// "M:SS" or "H:MM:SS".
std::string duration(double seconds);

// An exclusive lock on a run directory (flock on DIR/run.lock), released when this is destroyed
// or the process ends, however it ends.
class RunDirLock {
 public:
  RunDirLock() = default;
  explicit RunDirLock(int fd) : fd_(fd) {}
  RunDirLock(RunDirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  RunDirLock& operator=(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock();

 private:
  int fd_ = -1;
};

// What stops a run from starting in `dir` ("" when nothing): with resume, a directory that does
// not exist; without, one that already holds a run (it is never overwritten).
std::string run_dir_problem(const std::filesystem::path& dir, bool resume);

// Creates (or, with resume, opens) the run directory and locks it for this run: a directory
// another loom train holds is refused, naming its pid; one that already has results is never
// overwritten without resume (throws loom::Error).
RunDirLock prepare_run_dir(const std::filesystem::path& dir, bool resume);

// The fields in which two model sections differ, "" when they are equivalent: "model.d_model:
// 128 -> 256; ..." (saved's value first).
std::string model_differences(const config::ModelConfig& saved, const config::ModelConfig& now);

// A resumed run must read the same model and the same data stream as the run it continues;
// steps, learning rate, logging and checkpointing may change.
void check_resumable(const config::RunConfig& saved, const config::RunConfig& now,
                     const std::string& checkpoint);

// A run directory's config.textproto (`path`), parsed; throws loom::Error naming the file when it
// cannot be read or parsed.
config::RunConfig read_run_config(const std::filesystem::path& path);

// The checkpoint `path` names: `path` itself when it is a checkpoint folder, the newest complete
// checkpoint of the run when it is a run directory (as its config.textproto's
// checkpoint.directory says). Throws loom::Error saying which it is not, or that the run has
// no checkpoint yet.
std::string checkpoint_of(const std::string& path);

// --init-from `path` (a checkpoint, or a run directory: its newest) for a run of `cfg`: the
// checkpoint's absolute path, once its metadata reads and its model section is cfg's; throws
// loom::Error naming the differing fields otherwise.
std::string init_checkpoint(const std::string& path, const config::RunConfig& cfg);

// Loads the newest usable checkpoint into model (and optimizer, when non-null) and returns its
// folder ("" when there is none: the run stopped before its first). One that cannot be read,
// whose metadata is incomplete or names another step, or that fails its checksums (a disk that
// lost it) falls back to the one before, and says so; a config that does not fit the run is the
// user's to fix, so it stops the resume.
std::string resume_from(const std::string& checkpoints_dir, const config::RunConfig& cfg,
                        Model& model, Optimizer* optimizer, CheckpointState& state, RunLog& log);

// Bits per byte of the training and validation losses, when the data says how many bytes of
// text its tokens hold (negative: unknown).
struct BitsPerByte {
  double train = -1, val = -1;
};

// A validation's mean loss (nats per token) at one loop count.
struct ValLoss {
  int loops = 0;
  double loss = 0;
};

// How much of the machine a step used (docs/architecture.md, "Utilisation"): the step's model
// and hardware FLOPs over every rank (StepResult), per rank per second, against one rank's peak.
struct Utilisation {
  double model_flops = 0, hardware_flops = 0;
  double tflops_per_rank = 0;  // model FLOPs ÷ step time ÷ ranks
  double peak_tflops = 0;      // one rank's (core/peak_flops.h)
  double mfu = 0, hfu = 0;     // model and hardware FLOPs ÷ step time ÷ ranks ÷ peak
};
Utilisation step_utilisation(const StepResult& r, double ms, int ranks, double peak_tflops);

// What metrics.jsonl records of a step.
struct StepRecord {
  long step = 0;
  int loops = 0;
  const StepResult* result = nullptr;
  float lr = 0;
  double tokens_per_s = 0, ms = 0;
  std::vector<ValLoss> val;  // each count of train.eval_loops in its order; empty: none this step
  bool skipped = false;
  double activation_bytes = 0;
  BitsPerByte bpb;
  const RankHealth* health = nullptr;  // when measured
  std::string sent;                    // MiB each group sent ("tp":0.5,...) when given
  Utilisation use;
  const LoopStats* loop_stats = nullptr;  // logging.loop_stats, on a logging step
};

// One line of metrics.jsonl (without the newline): the step's figures, and rank health and the
// MiB each group sent when given. Of `val` the first is val_loss, all are val_loss_by_loops
// ({"1":x,"4":y}).
std::string metrics_line(const StepRecord& record);
// The same record's numbers as (metrics.jsonl key, value) pairs for TensorBoard: nested ones as
// key/part ("val_loss_by_loops/4", "routed_fraction/0"); sent_mib and flags left out.
std::vector<std::pair<std::string, double>> step_scalars(const StepRecord& record);

// metrics.jsonl's record of an automatic restart (loom train --max-restarts), written once the
// restarted run has resumed at `step`: {"step":S,"restart":K,"cause":"..."} (no loss: readers
// of steps skip lines without one).
std::string restart_metrics_line(long step, int restart, const std::string& cause);

// train.log opened for appending while this lives, its descriptor published in `slot` for a
// signal handler that ends the process at once and leaves a last line (RunSignals::log_fd).
class LastLineLog {
 public:
  LastLineLog(const std::filesystem::path& path, std::atomic<int>* slot);
  LastLineLog(const LastLineLog&) = delete;
  LastLineLog& operator=(const LastLineLog&) = delete;
  ~LastLineLog();

 private:
  std::atomic<int>* slot_;
};

// On resume, metrics of steps after the checkpoint are dropped: they will be recomputed.
void truncate_metrics(const std::filesystem::path& path, long last_step);

// JSON has no NaN or Infinity: a non-finite value is written as null.
std::string json_number(double v);

}  // namespace loom
