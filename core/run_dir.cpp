#include "core/run_dir.h"

#include <fcntl.h>
#include <google/protobuf/util/message_differencer.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <sstream>

#include "base/error.h"
#include "base/json_text.h"
#include "base/regular_file.h"
#include "core/config.h"

namespace loom {

namespace fs = std::filesystem;

void log_timestamp(int64_t seconds, char (&out)[kTimestampSize]) {
  // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm: eras of 400 years).
  const int64_t days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400;
  const int64_t second_of_day = seconds - days * 86400;
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const int64_t doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const int64_t year = yoe + era * 400 + (month <= 2);
  const auto put = [&out](size_t at, int64_t value, int digits) {
    for (int i = digits - 1; i >= 0; --i, value /= 10)
      out[at + i] = static_cast<char>('0' + value % 10);
  };
  put(0, std::clamp<int64_t>(year, 0, 9999), 4);
  out[4] = '-';
  put(5, month, 2);
  out[7] = '-';
  put(8, day, 2);
  out[10] = 'T';
  put(11, second_of_day / 3600, 2);
  out[13] = ':';
  put(14, second_of_day / 60 % 60, 2);
  out[16] = ':';
  put(17, second_of_day % 60, 2);
  out[19] = 'Z';
  out[20] = ' ';
}

std::string duration(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  return s >= 3600 ? format("%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60)
                   : format("%ld:%02ld", s / 60, s % 60);
}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) close(fd_);
}

namespace {

// The files loom writes in a run directory: where they exist they must be regular files of the
// directory's own, never links (which would carry the writes elsewhere) or FIFOs and devices
// (which would hang them).
void check_run_files(const fs::path& dir) {
  for (const char* name : {"run.lock", "train.log", "metrics.jsonl", "config.textproto",
                           "data.textproto", "trace.json"}) {
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(dir / name, ec);
    if (!fs::exists(st) || fs::is_regular_file(st)) continue;
    throw Error("run directory file " + (dir / name).string() + " is " +
                (fs::is_symlink(st) ? "a symbolic link" : "not a regular file") +
                ": loom writes only regular files inside the run directory; remove it, or "
                "choose another --run-dir");
  }
}

// Takes DIR/run.lock (flock: released by the kernel when the process dies) and writes this
// process's pid into it; a lock another process holds is refused, naming it.
RunDirLock lock_run_dir(const fs::path& dir) {
  check_run_files(dir);
  const fs::path path = dir / "run.lock";
  // O_NOFOLLOW and O_NONBLOCK: a link or FIFO put there since the check fails instead of
  // redirecting or hanging the write.
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  if (fd < 0) throw Error("cannot open " + path.string() + ": " + std::strerror(errno));
  RunDirLock lock(fd);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char pid[32] = {};
    if (pread(fd, pid, sizeof(pid) - 1, 0) < 0) pid[0] = '\0';
    if (error == EWOULDBLOCK)
      throw Error("run directory " + dir.string() + " is in use by another loom train (pid " +
                  std::string(pid[0] ? pid : "unknown") +
                  "); wait for it to end, or choose another --run-dir");
    throw Error("cannot lock " + path.string() + ": " + std::strerror(error));
  }
  const std::string me = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, me.data(), me.size(), 0) < 0)
    throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
  return lock;
}

}  // namespace

void throw_write_error(const std::string& path) {
  throw Error("cannot write " + path + ": " + (errno != 0 ? std::strerror(errno) : "write failed") +
              " (is its disk full?); the run stops here with its last checkpoint intact, and "
              "continues with --resume once there is room");
}

// A run directory that already has results is never overwritten; it is locked before it is
// looked at, so two runs started at once cannot both pass the check.
std::string run_dir_problem(const fs::path& dir, bool resume) {
  std::error_code ec;
  if (resume)
    return fs::is_directory(dir, ec)
               ? ""
               : "--resume: run directory " + dir.string() + " does not exist";
  if (fs::exists(dir / "metrics.jsonl", ec) || fs::exists(dir / "checkpoints", ec))
    return "run directory " + dir.string() +
           " already holds a run; pass --resume to continue it, or choose another --run-dir";
  return "";
}

RunDirLock prepare_run_dir(const fs::path& dir, bool resume) {
  std::error_code ec;
  if (resume) {
    if (const std::string problem = run_dir_problem(dir, true); !problem.empty())
      throw Error(problem);
    return lock_run_dir(dir);
  }
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create run directory " + dir.string() + ": " + ec.message());
  RunDirLock lock = lock_run_dir(dir);  // then no other run can start in it meanwhile
  if (const std::string problem = run_dir_problem(dir, false); !problem.empty())
    throw Error(problem);
  return lock;
}

// A resumed run must read the same model and the same data stream as the run it continues;
// steps, learning rate, logging and checkpointing may change.
std::string model_differences(const config::ModelConfig& saved, const config::ModelConfig& now) {
  std::string report;
  {
    google::protobuf::util::MessageDifferencer differ;
    differ.set_message_field_comparison(google::protobuf::util::MessageDifferencer::EQUIVALENT);
    differ.ReportDifferencesToString(&report);
    differ.Compare(saved, now);
  }
  std::string fields;  // from "modified: d_model: 128 -> 256\n" ...
  for (size_t at = 0; at < report.size();) {
    size_t end = report.find('\n', at);
    if (end == std::string::npos) end = report.size();
    std::string line = report.substr(at, end - at);
    if (line.starts_with("modified: ")) line = "model." + line.substr(10);
    fields += (fields.empty() ? "" : "; ") + line;
    at = end + 1;
  }
  return fields;
}

std::string init_checkpoint(const std::string& path, const config::RunConfig& cfg) {
  const std::string checkpoint = fs::absolute(checkpoint_of(path)).lexically_normal().string();
  const CheckpointState saved = checkpoint_read_state(checkpoint);
  if (const std::string fields = model_differences(saved.config.model(), cfg.model());
      !fields.empty())
    throw Error("--init-from " + checkpoint +
                ": the config's model section differs from the "
                "checkpoint's (" +
                fields +
                ", the checkpoint's value first); give the config "
                "the checkpoint's model section");
  return checkpoint;
}

void check_resumable(const config::RunConfig& saved, const config::RunConfig& now,
                     const std::string& checkpoint) {
  const std::string where = "--resume from " + checkpoint + ": ";
  if (const std::string fields = model_differences(saved.model(), now.model()); !fields.empty())
    throw Error(where +
                "the model section of the config differs from the one the run was "
                "trained with (" +
                fields +
                ", the run's value first); resume with the "
                "run's own config.textproto");
  const auto& a = saved.train();
  const auto& b = now.train();
  for (auto [name, same] : {std::pair{"train.seq_len", a.seq_len() == b.seq_len()},
                            {"train.global_batch", a.global_batch() == b.global_batch()},
                            {"train.seed", a.seed() == b.seed()},
                            {"train.shuffle", a.shuffle() == b.shuffle()},
                            {"data.train_shards",  // a run of an older loom saved a relative one
                             fs::absolute(saved.data().train_shards()).lexically_normal() ==
                                 fs::absolute(now.data().train_shards()).lexically_normal()}})
    if (!same)
      throw Error(where + std::string(name) +
                  " differs from the run's: the resumed run would read other data than the "
                  "uninterrupted one; keep the run's value");
}

config::RunConfig read_run_config(const fs::path& path) {
  return parse_config_text(read_regular_file(path.string(), size_t{1} << 20, "run config"),
                           path.string());
}

std::string checkpoint_of(const std::string& path) {
  std::error_code ec;
  if (fs::exists(fs::path(path) / "checkpoint.textproto", ec)) return path;
  if (!fs::exists(path, ec)) throw Error("no checkpoint at " + path + ": it does not exist");
  const fs::path saved_config = fs::path(path) / "config.textproto";
  if (!fs::exists(saved_config, ec))
    throw Error(path + " is neither a checkpoint (it has no checkpoint.textproto) nor a run " +
                "directory (it has no config.textproto)");
  const config::RunConfig cfg = read_run_config(saved_config);
  const fs::path checkpoints = fs::path(path) / cfg.checkpoint().directory();
  const std::string newest = checkpoint_latest(checkpoints.string());
  if (newest.empty())
    throw Error("the run " + path + " has no complete checkpoint yet (in " + checkpoints.string() +
                "; checkpoint.interval is " + std::to_string(cfg.checkpoint().interval()) + ")");
  return newest;
}

// Loads the newest usable checkpoint. One that cannot be read or fails its checksums (a disk
// that lost it) falls back to the one before, and says so; a config that does not fit the run
// is the user's to fix, so it stops the resume.
std::string resume_from(const std::string& checkpoints_dir, const config::RunConfig& cfg,
                        Model& model, Optimizer* optimizer, CheckpointState& state, RunLog& log) {
  const std::vector<std::string> saved = checkpoint_list(checkpoints_dir);
  if (saved.empty()) return "";  // stopped before its first checkpoint: the caller starts over
  for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
    const bool last_chance = std::next(it) == saved.rend();
    auto usable = [&](const std::function<void()>& read) {
      try {
        read();
        return true;
      } catch (const Error& e) {
        if (last_chance) throw;
        log.warn(std::string(e.what()) + "; trying the checkpoint before it");
        return false;
      }
    };
    config::RunConfig saved_cfg;
    if (!usable([&] { saved_cfg = checkpoint_read_state(*it).config; })) continue;
    check_resumable(saved_cfg, cfg, *it);
    if (!usable([&] { state = checkpoint_load(*it, model, optimizer); })) continue;
    if (state.step >= cfg.train().steps())
      throw Error("--resume from " + *it + ": the run has already completed " +
                  std::to_string(state.step) + " steps of train.steps = " +
                  std::to_string(cfg.train().steps()) + "; raise train.steps to train further");
    return *it;
  }
  LOOM_CHECK(false);
}

namespace {

// A float as it was written: 7 significant digits, what a float holds (an lr of 1e-4 is 0.0001,
// not 9.9999997e-05).
std::string float_text(float v) {
  if (!std::isfinite(v)) return "null";
  char text[32];
  std::snprintf(text, sizeof(text), "%.7g", static_cast<double>(v));
  return text;
}

}  // namespace

Utilisation step_utilisation(const StepResult& r, double ms, int ranks, double peak_tflops) {
  Utilisation u;
  u.model_flops = r.model_flops;
  u.hardware_flops = r.hardware_flops;
  u.peak_tflops = peak_tflops;
  const double rank_seconds = ms / 1000.0 * ranks;
  if (rank_seconds <= 0) return u;
  u.tflops_per_rank = r.model_flops / rank_seconds / 1e12;
  if (peak_tflops > 0) {
    u.mfu = u.tflops_per_rank / peak_tflops;
    u.hfu = r.hardware_flops / rank_seconds / 1e12 / peak_tflops;
  }
  return u;
}

std::string metrics_line(const StepRecord& record) {
  const StepResult& r = *record.result;
  const Utilisation& use = record.use;
  const BitsPerByte& bpb = record.bpb;
  const std::vector<ValLoss>& val = record.val;
  std::ostringstream out;
  out.precision(8);
  out << "{\"step\":" << record.step << ",\"loops\":" << record.loops
      << ",\"loss\":" << json_number(r.loss) << ",\"lr\":" << float_text(record.lr)
      << ",\"grad_norm\":" << json_number(r.grad_norm)
      << ",\"tokens_per_s\":" << record.tokens_per_s << ",\"ms_per_step\":" << record.ms
      << ",\"comm_wait_ms\":" << r.comm_wait_s * 1000.0 << ",\"model_flops\":" << use.model_flops
      << ",\"hardware_flops\":" << use.hardware_flops
      << ",\"tflops_per_rank\":" << use.tflops_per_rank << ",\"peak_tflops\":" << use.peak_tflops
      << ",\"mfu\":" << use.mfu << ",\"hfu\":" << use.hfu;
  if (bpb.train >= 0 || std::isnan(bpb.train)) out << ",\"bpb\":" << json_number(bpb.train);
  if (!val.empty()) out << ",\"val_loss\":" << json_number(val.front().loss);
  if (bpb.val >= 0 || std::isnan(bpb.val)) out << ",\"val_bpb\":" << json_number(bpb.val);
  for (size_t i = 0; i < val.size(); ++i)
    out << (i == 0 ? ",\"val_loss_by_loops\":{" : ",") << '"' << val[i].loops
        << "\":" << json_number(val[i].loss) << (i + 1 == val.size() ? "}" : "");
  out << ",\"activation_peak_mib\":" << record.activation_bytes / (1024.0 * 1024.0);
  if (record.health)
    out << ",\"rank_busy_ms_min\":" << record.health->min_ms
        << ",\"rank_busy_ms_median\":" << record.health->median_ms
        << ",\"rank_busy_ms_max\":" << record.health->max_ms
        << ",\"slowest_rank\":" << record.health->slowest;
  if (!record.sent.empty()) out << ",\"sent_mib\":{" << record.sent << "}";
  for (size_t i = 0; i < r.routing.active_fraction.size(); ++i)
    out << (i == 0 ? ",\"routed_fraction\":[" : ",") << r.routing.active_fraction[i]
        << (i + 1 == r.routing.active_fraction.size() ? "]" : "");
  if (!r.routing.active_fraction.empty())
    out << ",\"router_aux_loss\":" << json_number(r.routing.aux_loss)
        << ",\"step_flops\":" << r.step_flops;
  if (const LoopStats* loops = record.loop_stats)
    for (const auto& [key, values] : {std::pair{"loop_rms", &loops->rms},
                                      {"loop_change", &loops->change},
                                      {"loop_grad_norm", &loops->grad_norm}})
      for (size_t r = 0; r < values->size(); ++r)
        out << (r == 0 ? std::string(",\"") + key + "\":[" : ",") << json_number((*values)[r])
            << (r + 1 == values->size() ? "]" : "");
  if (record.skipped) out << ",\"skipped\":true";
  out << "}";
  return out.str();
}

std::vector<std::pair<std::string, double>> step_scalars(const StepRecord& record) {
  const StepResult& r = *record.result;
  const Utilisation& use = record.use;
  std::vector<std::pair<std::string, double>> s = {
      {"loss", r.loss},
      {"loops", record.loops},
      {"lr", record.lr},
      {"grad_norm", r.grad_norm},
      {"tokens_per_s", record.tokens_per_s},
      {"ms_per_step", record.ms},
      {"comm_wait_ms", r.comm_wait_s * 1000.0},
      {"tflops_per_rank", use.tflops_per_rank},
      {"mfu", use.mfu},
      {"hfu", use.hfu},
      {"activation_peak_mib", record.activation_bytes / (1024.0 * 1024.0)}};
  if (record.bpb.train >= 0) s.emplace_back("bpb", record.bpb.train);
  if (!record.val.empty()) s.emplace_back("val_loss", record.val.front().loss);
  if (record.bpb.val >= 0) s.emplace_back("val_bpb", record.bpb.val);
  for (const ValLoss& v : record.val)
    s.emplace_back("val_loss_by_loops/" + std::to_string(v.loops), v.loss);
  if (const RankHealth* h = record.health)
    s.insert(s.end(), {{"rank_busy_ms_min", h->min_ms},
                       {"rank_busy_ms_median", h->median_ms},
                       {"rank_busy_ms_max", h->max_ms}});
  const std::vector<double>& routed = r.routing.active_fraction;
  for (size_t i = 0; i < routed.size(); ++i)
    s.emplace_back("routed_fraction/" + std::to_string(i), routed[i]);
  if (!routed.empty()) s.emplace_back("router_aux_loss", r.routing.aux_loss);
  if (const LoopStats* loops = record.loop_stats)
    for (const auto& [key, values] : {std::pair{"loop_rms", &loops->rms},
                                      {"loop_change", &loops->change},
                                      {"loop_grad_norm", &loops->grad_norm}})
      for (size_t i = 0; i < values->size(); ++i)
        s.emplace_back(std::string(key) + "/" + std::to_string(i), (*values)[i]);
  return s;
}

// On resume, metrics of steps after the checkpoint are dropped: they will be recomputed.
const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    case SIGQUIT:
      return "SIGQUIT";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    case SIGKILL:
      return "SIGKILL";
    case SIGSEGV:
      return "SIGSEGV";
    case SIGABRT:
      return "SIGABRT";
    case SIGBUS:
      return "SIGBUS";
    default:
      return "a signal";
  }
}

std::string restart_metrics_line(long step, int restart, const std::string& cause) {
  return "{\"step\":" + std::to_string(step) + ",\"restart\":" + std::to_string(restart) +
         ",\"cause\":" + json_quote(cause) + "}";
}

LastLineLog::LastLineLog(const fs::path& path, std::atomic<int>* slot) : slot_(slot) {
  if (!slot_) return;
  // Not following a link, as RunLog's own opening was checked (check_run_files).
  const int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  if (fd >= 0) slot_->store(fd);
}

LastLineLog::~LastLineLog() {
  if (!slot_) return;
  const int fd = slot_->exchange(-1);
  if (fd >= 0) close(fd);
}

void truncate_metrics(const fs::path& path, long last_step) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return;
  std::istringstream in(read_regular_file(path.string(), size_t{4} << 30, "metrics file"));
  std::string line, kept;
  while (std::getline(in, line)) {
    long step = 0;
    if (std::sscanf(line.c_str(), "{\"step\":%ld", &step) == 1 && step <= last_step)
      kept += line + '\n';
  }
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush())
      throw Error("cannot rewrite " + path.string() + ": " + std::strerror(errno) +
                  "; it is unchanged");
  }
  fs::rename(tmp, path);
}


// JSON has no NaN or Infinity: a non-finite value is written as null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream out;
  out.precision(8);
  out << v;
  return out.str();
}



}  // namespace loom
