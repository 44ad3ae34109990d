#include "launcher/spawn.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <system_error>
#include <thread>

#include "base/error.h"
#include "core/run_dir.h"
#include "launcher/train_signals.h"

namespace loom {
namespace {

// A positive integer value of `name`, 0 when unset or not a positive integer.
int positive_int(const GetEnv& env, const char* name) {
  const char* value = env(name);
  if (!value || !*value) return 0;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(value, &end, 10);
  if (errno != 0 || *end != '\0' || n <= 0 || n > 1 << 30) return 0;
  return static_cast<int>(n);
}

bool is_set(const GetEnv& env, const char* name) {
  const char* value = env(name);
  return value && *value;
}

// Inside a job step that srun started. Slurm leaves SLURM_STEP_ID unset in batch scripts and
// salloc shells (22.05); a non-numeric value ("batch", "extern") or one of Slurm's reserved
// step ids (≥ 0xfffffff0: pending, batch, extern, interactive) is not a step srun could share.
bool in_job_step(const GetEnv& env) {
  const char* step = env("SLURM_STEP_ID");
  if (!step || !*step) return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long id = std::strtoull(step, &end, 10);
  if (errno != 0 || *end != '\0') return false;
  return id < 0xfffffff0ull;
}

}  // namespace

GetEnv process_environment() {
  return [](const char* name) -> const char* { return std::getenv(name); };
}

LaunchEnvironment detect_launch_environment(const GetEnv& env) {
  LaunchEnvironment out;
  const bool step = in_job_step(env);
  out.is_worker =
      is_set(env, "OMPI_COMM_WORLD_SIZE") || is_set(env, "PMIX_RANK") || is_set(env, "PMI_RANK");
  const int step_tasks = step ? (positive_int(env, "SLURM_STEP_NUM_TASKS") > 0
                                     ? positive_int(env, "SLURM_STEP_NUM_TASKS")
                                     : positive_int(env, "SLURM_NTASKS"))
                              : 0;
  if (out.is_worker) {
    // PMIx publishes the job size through its API, not the environment; srun's step size is
    // the same number.
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
      if (!out.launcher_world_size) out.launcher_world_size = positive_int(env, name);
    if (!out.launcher_world_size) out.launcher_world_size = step_tasks;
    return out;
  }
  if (step && step_tasks > 1)
    throw Error("srun started " + std::to_string(step_tasks) +
                " tasks without an MPI plugin (no PMIX_RANK or PMI_RANK in the environment), so "
                "each would run alone; start the ranks with `srun --mpi=pmix`, or run `loom train` "
                "once inside the allocation and let it start them");
  out.in_slurm_allocation = is_set(env, "SLURM_JOB_ID") && !step;
  if (out.in_slurm_allocation) {
    out.slurm_cpus_per_task = positive_int(env, "SLURM_CPUS_PER_TASK");
    out.slurm_ntasks_per_node = positive_int(env, "SLURM_NTASKS_PER_NODE");
  }
  return out;
}

LaunchHost this_host() {
  LaunchHost host;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    host.cores = CPU_COUNT(&set);
  else
    host.cores = static_cast<int>(std::thread::hardware_concurrency());
  if (host.cores < 1) host.cores = 1;
  host.is_root = geteuid() == 0;
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error)
    throw Error("cannot find the loom executable through /proc/self/exe: " + error.message() +
                " (is /proc mounted?)");
  host.executable = exe.string();
  return host;
}

std::vector<std::string> launch_command(int world, const std::vector<std::string>& worker_args,
                                        const LaunchEnvironment& env, const LaunchHost& host,
                                        const LaunchHosts& hosts) {
  LOOM_CHECK(world >= 1);
  LOOM_CHECK(!host.executable.empty());
  const std::string n = std::to_string(world);
  std::vector<std::string> argv;
  if (env.in_slurm_allocation) {
    argv = {"srun", "--ntasks=" + n, "--kill-on-bad-exit=1", "--quit-on-interrupt", "--mpi=pmix"};
    if (env.slurm_cpus_per_task > 0)
      argv.push_back("--cpus-per-task=" + std::to_string(env.slurm_cpus_per_task));
    if (env.slurm_ntasks_per_node > 0)
      argv.insert(argv.end(), {"--ntasks-per-node=" + std::to_string(env.slurm_ntasks_per_node),
                               "--distribution=block"});
  } else {
    argv = {"mpirun", "-np", n};
    if (host.is_root) argv.push_back("--allow-run-as-root");
    if (!hosts.empty()) {
      if (!hosts.hostfile.empty())
        argv.insert(argv.end(), {"--hostfile", hosts.hostfile});
      else
        argv.insert(argv.end(), {"--host", hosts.hosts});
      // The other nodes' cores are not known here: each rank sizes its threads by its node's
      // cores and ranks (core/trainer.cpp), unbound.
      argv.insert(argv.end(), {"--map-by", "slot", "--bind-to", "none"});
      if (!hosts.workdir.empty()) argv.insert(argv.end(), {"--wdir", hosts.workdir});
      for (const std::string& name : hosts.forward_env) argv.insert(argv.end(), {"-x", name});
    } else if (world > host.cores) {
      argv.insert(argv.end(), {"--oversubscribe", "--bind-to", "none"});
    } else {
      argv.insert(argv.end(), {"--map-by", "slot:PE=" + std::to_string(host.cores / world),
                               "--bind-to", "core"});
    }
  }
  argv.push_back(host.executable);
  argv.insert(argv.end(), worker_args.begin(), worker_args.end());
  return argv;
}

std::vector<std::string> rank_environment(char** entries) {
  std::vector<std::string> names;
  for (char** e = entries; e && *e; ++e) {
    const std::string entry = *e;
    const size_t eq = entry.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = entry.substr(0, eq);
    for (const char* prefix : {"LOOM_", "OMP_", "OPENBLAS_"})
      if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  return names;
}

namespace {

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

// The process-global state run_job needs: a signal handler receives only the signal number, so
// the pid to forward to must live where the handler can read it. Lock-free atomics are
// async-signal-safe. g_child is the running child (0: none yet or already exited); g_pending
// holds signals (one bit each) that arrived before the child's pid was known; g_busy makes a
// second concurrent run_job a checked error instead of a silent mix-up.
std::atomic<pid_t> g_child{0};
std::atomic<unsigned> g_pending{0};
std::atomic<bool> g_busy{false};
// The last SIGINT, SIGTERM, SIGHUP or SIGQUIT received (0: none): the job's exit status says
// it, as a single process's would.
std::atomic<int> g_stopped_by{0};
// JobOptions::graceful_stop for the running job, and when its first SIGINT or SIGTERM arrived
// (CLOCK_MONOTONIC milliseconds, 0: none yet).
std::atomic<bool> g_graceful{false};
std::atomic<int64_t> g_first_stop_ms{0};
static_assert(std::atomic<pid_t>::is_always_lock_free);
static_assert(std::atomic<unsigned>::is_always_lock_free);

// Forwards to the child's pid, not its process group: mpirun and srun relay a signal to every
// rank themselves (the ranks run in process groups of their own), and mpirun turns a second
// SIGINT into an immediate abort, so each received signal must reach it exactly once.
void forward_signal(int sig) {
  if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT) g_stopped_by.store(sig);
  if ((sig == SIGINT || sig == SIGTERM) && g_graceful.load()) {
    // mpirun and srun end a job at once on SIGINT or SIGTERM; the ranks stop at a step boundary
    // with a checkpoint on SIGUSR1, which both pass on. A repeat within the window is the same
    // request delivered twice; a later one is passed on as it is and ends the job at once.
    const int64_t ms = monotonic_ms();
    int64_t first = 0;
    if (g_first_stop_ms.compare_exchange_strong(first, ms)) {
      const int saved_errno = errno;
      const char note[] =
          "loom: every rank stops after its current step with a checkpoint "
          "(send the signal again to stop at once)\n";
      [[maybe_unused]] const ssize_t n = write(STDERR_FILENO, note, sizeof(note) - 1);
      errno = saved_errno;
      sig = SIGUSR1;
    } else if (ms - first < static_cast<int64_t>(kRepeatWindowS * 1000)) {
      return;
    }
  }
  const unsigned bit = 1u << sig;
  pid_t child = g_child.load();
  if (child <= 0) {
    // Either run_job's drain after publishing the pid sees this bit, or the reload below sees
    // the pid and exactly one of the two clears the bit.
    g_pending.fetch_or(bit);
    child = g_child.load();
    if (child <= 0 || !(g_pending.fetch_and(~bit) & bit)) return;
  }
  const int saved_errno = errno;
  kill(child, sig);
  errno = saved_errno;
}

// Hint appended to "cannot start PROGRAM".
std::string install_hint(const std::string& program) {
  if (program == "mpirun") return "install Open MPI: apt-get install openmpi-bin";
  if (program == "srun") return "srun comes with Slurm; is Slurm installed on this node?";
  return "check that it is installed and on PATH";
}

}  // namespace

std::string find_program(const std::string& program) {
  auto runnable = [](const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
  };
  if (program.find('/') != std::string::npos) {
    if (runnable(program)) return program;
    throw Error("cannot start " + program + ": no executable file there (" + install_hint(program) +
                ")");
  }
  const char* path_env = std::getenv("PATH");
  const std::string path = path_env && *path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find(':', begin);
    if (end == std::string::npos) end = path.size();
    const std::string dir = end > begin ? path.substr(begin, end - begin) : ".";
    const std::string candidate = dir + "/" + program;
    if (runnable(candidate)) return candidate;
    begin = end + 1;
  }
  throw Error("cannot start " + program + ": not found on PATH (" + install_hint(program) + ")");
}

namespace {

// In the child between fork and exec: only async-signal-safe calls. Reports errno through
// `report` (close-on-exec, so a successful exec closes it) and exits 127 on failure.
[[noreturn]] void exec_child(const char* file, char* const* argv, pid_t parent,
                             const sigset_t& original_mask, int report, int stderr_to) {
  setpgid(0, 0);
  if (stderr_to >= 0) dup2(stderr_to, STDERR_FILENO);  // the pipe's own ends close on exec
  // SIGTERM when the thread that forked us ends, e.g. when loom is killed; if loom died
  // before this call, nobody would send it, so check.
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(128 + SIGTERM);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  for (int sig : kForwarded) {
    struct sigaction current {};
    // Signals loom ignores (nohup's SIGHUP) stay ignored in the child; forwarded ones default.
    if (sigaction(sig, nullptr, &current) == 0 && current.sa_handler != SIG_IGN)
      sigaction(sig, &default_action, nullptr);
  }
  sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  const int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd >= 0 && null_fd != STDIN_FILENO) {
    dup2(null_fd, STDIN_FILENO);
    close(null_fd);
  }
  execv(file, argv);
  const int error = errno;
  [[maybe_unused]] const ssize_t written = write(report, &error, sizeof(error));
  _exit(127);
}

// Installs forwarding handlers and restores the previous ones (and clears the shared state)
// when it goes out of scope.
class SignalForwarding {
 public:
  SignalForwarding() {
    struct sigaction action {};
    action.sa_handler = forward_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < kCount; ++i) {
      sigaction(kForwarded[i], nullptr, &previous_[i]);
      // A signal loom was told to ignore (nohup) is ignored for the job too.
      if (previous_[i].sa_handler == SIG_IGN) continue;
      sigaction(kForwarded[i], &action, nullptr);
      installed_[i] = true;
    }
  }
  ~SignalForwarding() {
    sigset_t all, old;
    sigemptyset(&all);
    for (int sig : kForwarded) sigaddset(&all, sig);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < kCount; ++i)
      if (installed_[i]) sigaction(kForwarded[i], &previous_[i], nullptr);
    g_child.store(0);
    g_pending.store(0);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  SignalForwarding(const SignalForwarding&) = delete;
  SignalForwarding& operator=(const SignalForwarding&) = delete;

 private:
  static constexpr int kCount = sizeof(kForwarded) / sizeof(kForwarded[0]);
  struct sigaction previous_[kCount] {};
  bool installed_[kCount] = {};
};

// Closes a file descriptor once.
struct Fd {
  int fd = -1;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) close(fd);
    fd = -1;
  }
};

// Whether a line of Open MPI's is only a pointer to its help aggregation.
bool help_aggregation_line(const std::string& line) {
  return line.find("more process has sent help message") != std::string::npos ||
         line.find("more processes have sent help message") != std::string::npos ||
         line.find("orte_base_help_aggregate") != std::string::npos;
}

bool rule_line(const std::string& line) {
  return line.size() >= 20 && line.find_first_not_of('-') == std::string::npos;
}

// Copies the job's stderr to loom's line by line, leaving out what only repeats a failure loom
// has already explained: Open MPI's "MPI_ABORT was invoked" block (a rank calls MPI_Abort only
// after printing its error) and its help-aggregation notes. Every other line passes, mpirun's
// notice of a rank killed by a signal included; a block between rule lines is held until it
// closes (at most kMaxBlockLines). Runs on a thread of its own until the pipe closes, or once the
// job has ended, until it is quiet for half a second or 2 s have passed (a remote ssh, or a
// process the job left behind, may keep it open).
class StderrFilter {
 public:
  explicit StderrFilter(int fd) : fd_(fd), thread_([this] { run(); }) {}
  ~StderrFilter() {
    job_ended_.store(true);
    thread_.join();
  }
  StderrFilter(const StderrFilter&) = delete;
  StderrFilter& operator=(const StderrFilter&) = delete;

 private:
  static constexpr size_t kMaxBlockLines = 40;

  void run() {
    using Clock = std::chrono::steady_clock;
    auto quiet_since = Clock::now();
    std::optional<Clock::time_point> ended;
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      const int ready = poll(&p, 1, 100);
      if (ready < 0 && errno != EINTR) {  // cannot wait: read (blocking) until the pipe closes
        while (read_some()) {
        }
        break;
      }
      if (ready > 0) {
        if (!read_some()) break;
        quiet_since = Clock::now();
      }
      if (job_ended_.load()) {
        const auto now = Clock::now();
        if (!ended) ended = now;
        if (now - quiet_since > std::chrono::milliseconds(500) ||
            now - *ended > std::chrono::seconds(2))
          break;
      }
    }
    if (!pending_.empty()) take(pending_);
    emit(block_);  // an unterminated block is shown as it is
  }
  // Reads what the pipe holds and passes on its complete lines; false at its end.
  bool read_some() {
    char buffer[4096];
    ssize_t n;
    do n = read(fd_, buffer, sizeof(buffer));
    while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    pending_.append(buffer, static_cast<size_t>(n));
    for (size_t end; (end = pending_.find('\n')) != std::string::npos;) {
      take(pending_.substr(0, end + 1));
      pending_.erase(0, end + 1);
    }
    return true;
  }
  void take(const std::string& line) {
    std::string text = line;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (!in_block_ && rule_line(text)) {
      in_block_ = true;
      block_ = line;
      return;
    }
    if (in_block_) {
      block_ += line;
      if (!rule_line(text) && ++block_lines_ < kMaxBlockLines) return;
      in_block_ = false;
      block_lines_ = 0;
      if (block_.find("MPI_ABORT was invoked") == std::string::npos) emit(block_);
      block_.clear();
      return;
    }
    if (!help_aggregation_line(text)) emit(line);
  }
  static void emit(const std::string& text) {
    for (size_t done = 0; done < text.size();) {
      const ssize_t n = write(STDERR_FILENO, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += static_cast<size_t>(n);
    }
  }

  int fd_;
  std::atomic<bool> job_ended_{false};
  std::string pending_;  // a line not yet complete
  bool in_block_ = false;
  size_t block_lines_ = 0;
  std::string block_;
  std::thread thread_;
};

// A close-on-exec pipe; `program` names what it is for in the error.
void open_pipe(Fd& read_end, Fd& write_end, const std::string& program) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    throw Error("cannot start " + program + ": pipe: " + std::strerror(errno));
  read_end.fd = fds[0];
  write_end.fd = fds[1];
}

// run_job's status from waitpid's: 128 + N for signal N, and 128 + N also when a SIGINT,
// SIGTERM, SIGHUP or SIGQUIT this process passed on ended the job.
int job_status(int status, const JobOptions& options) {
  const int code = WIFEXITED(status)     ? WEXITSTATUS(status)
                   : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                         : 1;
  const int sig = g_stopped_by.exchange(0);
  if (options.received_signal) *options.received_signal = sig;
  // Stopped at once by a signal: say so and end as the signal would (130, 143, ...), not with
  // the launcher's generic failure status (mpirun exits 1 once it has stopped the ranks).
  if (sig != 0 && (code == 1 || code >= 128)) {
    std::cerr << "loom: stopped by " << signal_name(sig) << " (passed on to every rank)"
              << std::endl;
    return 128 + sig;
  }
  return code;
}

}  // namespace

int run_job(const std::vector<std::string>& argv, const JobOptions& options) {
  LOOM_CHECK(!argv.empty());
  const std::string file = find_program(argv[0]);
  std::vector<char*> c_argv;
  for (const std::string& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);

  bool expected = false;
  LOOM_CHECK(g_busy.compare_exchange_strong(expected, true));  // one run_job at a time
  struct Release {
    ~Release() { g_busy.store(false); }
  } release;

  Fd report_read, report_write, stderr_read, stderr_write;
  open_pipe(report_read, report_write, argv[0]);
  if (options.filter_mpi_notices) open_pipe(stderr_read, stderr_write, argv[0]);

  g_graceful.store(options.graceful_stop);
  g_first_stop_ms.store(0);
  SignalForwarding forwarding;
  // Signals are held in this thread from before fork until the child's pid is published, so
  // none is lost or delivered to a half-made child; other threads park theirs in g_pending.
  sigset_t forwarded, original_mask;
  sigemptyset(&forwarded);
  for (int sig : kForwarded) sigaddset(&forwarded, sig);
  pthread_sigmask(SIG_BLOCK, &forwarded, &original_mask);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0)
    exec_child(file.c_str(), c_argv.data(), parent, original_mask, report_write.fd,
               stderr_write.fd);
  if (pid < 0) {
    const int error = errno;
    pthread_sigmask(SIG_SETMASK, &original_mask, nullptr);
    throw Error("cannot start " + argv[0] + ": fork: " + std::strerror(error));
  }
  setpgid(pid, pid);  // also here, so the group exists before any signal is forwarded
  g_child.store(pid);
  const unsigned pending = g_pending.exchange(0);
  for (int sig : kForwarded)
    if (pending & (1u << sig)) kill(pid, sig);
  pthread_sigmask(SIG_SETMASK, &original_mask, nullptr);

  report_write.reset();
  stderr_write.reset();
  std::optional<StderrFilter> filter;
  if (stderr_read.fd >= 0) filter.emplace(stderr_read.fd);
  int exec_error = 0;
  ssize_t got;
  do {
    got = read(report_read.fd, &exec_error, sizeof(exec_error));
  } while (got < 0 && errno == EINTR);

  // Wait without reaping first, so the pid cannot be reused while a handler may still send to
  // it; then unpublish it and reap.
  siginfo_t info{};
  while (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
  }
  g_child.store(0);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  filter.reset();  // the job's last lines are out before loom's own
  if (got == static_cast<ssize_t>(sizeof(exec_error)))
    throw Error("cannot start " + argv[0] + " (" + file + "): " + std::strerror(exec_error) + " (" +
                install_hint(argv[0]) + ")");
  return job_status(status, options);
}

}  // namespace loom
