// The launcher's contract: the mpirun / srun argument vectors, how a process tells what
// started it, and run_job (exit status, signals, process group, stdin, parent death, missing
// program). Every run_job test runs in a forked helper process, because run_job installs
// process-wide signal handlers that must not touch the gtest process.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "launcher/cpu_features.h"
#include "launcher/spawn.h"

namespace loom {
namespace {

using Strings = std::vector<std::string>;

GetEnv fake_env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

LaunchHost host(int cores, bool root) { return {cores, root, "/opt/loom/bin/loom"}; }

const Strings kWorkerArgs = {"train", "cfg.textproto", "--set", "optim.lr=1e-3", "--run-dir", "r"};

Strings with_worker(Strings head) {
  head.push_back("/opt/loom/bin/loom");
  head.insert(head.end(), kWorkerArgs.begin(), kWorkerArgs.end());
  return head;
}

// --- argument vectors ---

TEST(LaunchCommand, MpirunGivesEachRankItsShareOfCores) {
  EXPECT_EQ(launch_command(4, kWorkerArgs, {}, host(8, false)),
            with_worker({"mpirun", "-np", "4", "--map-by", "slot:PE=2", "--bind-to", "core"}));
  EXPECT_EQ(launch_command(2, kWorkerArgs, {}, host(2, false)),
            with_worker({"mpirun", "-np", "2", "--map-by", "slot:PE=1", "--bind-to", "core"}));
  EXPECT_EQ(launch_command(3, kWorkerArgs, {}, host(8, false)),  // 8 / 3 rounds down
            with_worker({"mpirun", "-np", "3", "--map-by", "slot:PE=2", "--bind-to", "core"}));
}

TEST(LaunchCommand, MpirunOversubscribesWhenRanksExceedCores) {
  EXPECT_EQ(launch_command(4, kWorkerArgs, {}, host(2, false)),
            with_worker({"mpirun", "-np", "4", "--oversubscribe", "--bind-to", "none"}));
}

TEST(LaunchCommand, MpirunAsRoot) {
  EXPECT_EQ(launch_command(2, kWorkerArgs, {}, host(4, true)),
            with_worker({"mpirun", "-np", "2", "--allow-run-as-root", "--map-by", "slot:PE=2",
                         "--bind-to", "core"}));
}

TEST(LaunchCommand, MpirunAsRootOversubscribed) {
  EXPECT_EQ(launch_command(8, kWorkerArgs, {}, host(2, true)),
            with_worker({"mpirun", "-np", "8", "--allow-run-as-root", "--oversubscribe",
                         "--bind-to", "none"}));
}

TEST(LaunchCommand, SrunInsideAnAllocation) {
  LaunchEnvironment env;
  env.in_slurm_allocation = true;
  // Cores and root do not matter to srun: Slurm places the tasks.
  const Strings expected = with_worker(
      {"srun", "--ntasks=16", "--kill-on-bad-exit=1", "--quit-on-interrupt", "--mpi=pmix"});
  EXPECT_EQ(launch_command(16, kWorkerArgs, env, host(2, true)), expected);
  EXPECT_EQ(launch_command(16, kWorkerArgs, env, host(64, false)), expected);
  env.slurm_cpus_per_task = 4;
  EXPECT_EQ(launch_command(16, kWorkerArgs, env, host(2, false)),
            with_worker({"srun", "--ntasks=16", "--kill-on-bad-exit=1", "--quit-on-interrupt",
                         "--mpi=pmix", "--cpus-per-task=4"}));
}

// --- environment detection ---

TEST(LaunchEnvironment, PlainProcess) {
  const LaunchEnvironment env = detect_launch_environment(fake_env({{"HOME", "/root"}}));
  EXPECT_FALSE(env.is_worker);
  EXPECT_FALSE(env.in_slurm_allocation);
  EXPECT_EQ(env.launcher_world_size, 0);
}

TEST(LaunchEnvironment, OpenMpiRank) {
  const LaunchEnvironment env = detect_launch_environment(
      fake_env({{"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_RANK", "2"}, {"PMIX_RANK", "2"}}));
  EXPECT_TRUE(env.is_worker);
  EXPECT_EQ(env.launcher_world_size, 4);
  EXPECT_FALSE(env.in_slurm_allocation);
}

TEST(LaunchEnvironment, OpenMpiRankInsideSlurmAllocation) {
  // mpirun run by hand in a batch script: its ranks see the allocation too, but are workers.
  const LaunchEnvironment env = detect_launch_environment(
      fake_env({{"OMPI_COMM_WORLD_SIZE", "2"}, {"SLURM_JOB_ID", "7"}, {"SLURM_NTASKS", "2"}}));
  EXPECT_TRUE(env.is_worker);
  EXPECT_EQ(env.launcher_world_size, 2);
  EXPECT_FALSE(env.in_slurm_allocation);
}

TEST(LaunchEnvironment, SrunWithPmix) {
  // What `srun --mpi=pmix --ntasks=2` sets in each task (Slurm 22.05).
  const LaunchEnvironment env = detect_launch_environment(fake_env({{"PMIX_RANK", "1"},
                                                                    {"SLURM_JOB_ID", "3"},
                                                                    {"SLURM_STEP_ID", "1"},
                                                                    {"SLURM_STEP_NUM_TASKS", "2"},
                                                                    {"SLURM_NTASKS", "2"},
                                                                    {"SLURM_PROCID", "1"}}));
  EXPECT_TRUE(env.is_worker);
  EXPECT_EQ(env.launcher_world_size, 2);
  EXPECT_FALSE(env.in_slurm_allocation);
}

TEST(LaunchEnvironment, PmiRank) {
  const LaunchEnvironment env =
      detect_launch_environment(fake_env({{"PMI_RANK", "0"}, {"PMI_SIZE", "3"}}));
  EXPECT_TRUE(env.is_worker);
  EXPECT_EQ(env.launcher_world_size, 3);
}

TEST(LaunchEnvironment, SlurmBatchScript) {
  // What sbatch --ntasks=2 --cpus-per-task=1 sets in the batch script (no SLURM_STEP_ID).
  const LaunchEnvironment env = detect_launch_environment(fake_env({{"SLURM_JOB_ID", "1"},
                                                                    {"SLURM_NTASKS", "2"},
                                                                    {"SLURM_CPUS_PER_TASK", "3"},
                                                                    {"SLURM_CPUS_ON_NODE", "6"},
                                                                    {"SLURM_PROCID", "0"}}));
  EXPECT_FALSE(env.is_worker);
  EXPECT_TRUE(env.in_slurm_allocation);
  EXPECT_EQ(env.slurm_cpus_per_task, 3);
}

TEST(LaunchEnvironment, ReservedStepIdsAreNotJobSteps) {
  for (const char* step : {"batch", "extern", "4294967291", "4294967290"}) {
    const LaunchEnvironment env = detect_launch_environment(
        fake_env({{"SLURM_JOB_ID", "1"}, {"SLURM_STEP_ID", step}, {"SLURM_STEP_NUM_TASKS", "4"}}));
    EXPECT_TRUE(env.in_slurm_allocation) << step;
    EXPECT_FALSE(env.is_worker) << step;
  }
}

TEST(LaunchEnvironment, SingleTaskSrunStepIsNotAnAllocation) {
  // `srun -n1 loom train` inside an allocation: one task, not a worker; a further srun from
  // inside the step is not where ranks start, so mpirun is used.
  const LaunchEnvironment env = detect_launch_environment(
      fake_env({{"SLURM_JOB_ID", "1"}, {"SLURM_STEP_ID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}}));
  EXPECT_FALSE(env.is_worker);
  EXPECT_FALSE(env.in_slurm_allocation);
}

TEST(LaunchEnvironment, SrunWithoutMpiPluginIsAnError) {
  // What `srun --ntasks=2` sets with MpiDefault=none: no PMIX_RANK, no PMI_RANK.
  const GetEnv env = fake_env({{"SLURM_JOB_ID", "1"},
                               {"SLURM_STEP_ID", "0"},
                               {"SLURM_STEP_NUM_TASKS", "2"},
                               {"SLURM_NTASKS", "2"},
                               {"SLURM_PROCID", "1"}});
  try {
    detect_launch_environment(env);
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("srun started 2 tasks without an MPI plugin"), std::string::npos)
        << message;
    EXPECT_NE(message.find("srun --mpi=pmix"), std::string::npos) << message;
  }
}

// --- this_host ---

TEST(ThisHost, DescribesThisProcess) {
  const LaunchHost h = this_host();
  EXPECT_GE(h.cores, 1);
  EXPECT_EQ(h.is_root, geteuid() == 0);
  EXPECT_EQ(h.executable.front(), '/');
  EXPECT_NE(h.executable.find("launcher_tests"), std::string::npos) << h.executable;
}

// --- run_job, each in a helper process ---

// Runs `body` in a forked process (alarm-bounded) and returns its wait status.
int in_helper(const std::function<int()>& body, unsigned timeout_s = 20) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(timeout_s);
    int code = 99;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "helper: %s\n", e.what());
      code = 98;
    }
    std::fflush(nullptr);
    _exit(code);
  }
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  return status;
}

int exit_code(int status) {
  EXPECT_TRUE(WIFEXITED(status)) << "helper killed by signal "
                                 << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(RunJob, ReturnsTheChildsExitStatus) {
  EXPECT_EQ(exit_code(in_helper([] { return run_job({"sh", "-c", "exit 7"}); })), 7);
  EXPECT_EQ(exit_code(in_helper([] { return run_job({"true"}); })), 0);
}

TEST(RunJob, ReturnsSignalPlus128WhenTheChildIsKilled) {
  EXPECT_EQ(exit_code(in_helper([] {
              return run_job({"sh", "-c", "kill -TERM $$"});
            })),
            128 + SIGTERM);
}

// run_job with filter_mpi_notices in a helper whose stderr goes to `path`.
int filtered_job_to(const std::string& path, const std::string& script) {
  return in_helper([&] {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDERR_FILENO);
    close(fd);
    return run_job({"sh", "-c", script}, {.filter_mpi_notices = true});
  });
}

// A file name of this test process's own under /tmp.
std::string scratch_path(const std::string& name) {
  return "/tmp/loom_launcher_test_" + std::to_string(getpid()) + "_" + name;
}

// The file's text; the file is removed.
std::string file_text(const std::string& path) {
  std::ifstream in(path);
  std::string text(std::istreambuf_iterator<char>(in), {});
  std::remove(path.c_str());
  return text;
}

TEST(RunJob, FilterDropsOpenMpisAbortBannerAndKeepsTheRest) {
  const std::string rule(74, '-'), path = scratch_path("stderr.txt");
  const std::string script =
      "echo 'loom train: error: no shard matches x' >&2;"
      "printf '%s\\nMPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD\\n"
      "with errorcode 65.\\n%s\\n' " +
      rule + " " + rule +
      " >&2;"
      "echo '[host:01234] 1 more process has sent help message help-mpi-api.txt / mpi-abort' >&2;"
      "echo 'Set MCA parameter \"orte_base_help_aggregate\" to 0 to see all help' >&2;"
      "printf '%s\\nmpirun noticed that process rank 1 exited on signal 9 (Killed).\\n%s\\n' " +
      rule + " " + rule +
      " >&2;"
      "printf 'a last line without a newline' >&2; exit 65";
  EXPECT_EQ(exit_code(filtered_job_to(path, script)), 65);
  const std::string err = file_text(path);
  EXPECT_NE(err.find("loom train: error: no shard matches x\n"), std::string::npos) << err;
  EXPECT_EQ(err.find("MPI_ABORT"), std::string::npos) << err;
  EXPECT_EQ(err.find("help message"), std::string::npos) << err;
  EXPECT_EQ(err.find("orte_base_help_aggregate"), std::string::npos) << err;
  EXPECT_NE(err.find(rule + "\nmpirun noticed that process rank 1 exited on signal 9"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("a last line without a newline"), std::string::npos) << err;
}

TEST(RunJob, FilterNeitherHoldsBackAnOpenBlockNorWaitsForAWriterLeftBehind) {
  const std::string path = scratch_path("stderr.txt");
  // A rule line that no second one closes, then 50 lines: shown once 40 are held.
  std::string script = "printf '%s\\n' " + std::string(30, '-') +
                       " >&2; i=0;"
                       "while [ $i -lt 50 ]; do echo line $i >&2; i=$((i+1)); done;"
                       // a process the job leaves behind keeps writing to the pipe
                       "(while :; do echo still here >&2; sleep 0.2; done) & exit 3";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(exit_code(filtered_job_to(path, script)), 3);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(6));
  const std::string err = file_text(path);
  EXPECT_NE(err.find("line 49\n"), std::string::npos) << err;
  EXPECT_NE(err.find("still here"), std::string::npos) << err;
  // (the writer left behind dies of SIGPIPE at its next line: run_job closed the pipe)
}

TEST(RunJob, ChildHasItsOwnProcessGroupAndNoTerminalInput) {
  // Field 5 of /proc/PID/stat is the process group; sh's name has no spaces.
  const char* script =
      "[ \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" ] || exit 3;"
      "[ \"$(readlink /proc/$$/fd/0)\" = /dev/null ] || exit 4; exit 0";
  EXPECT_EQ(exit_code(in_helper([&] { return run_job({"sh", "-c", script}); })), 0);
}

TEST(RunJob, ThrowsForAMissingProgram) {
  try {
    run_job({"mpirun-that-does-not-exist-loom-test"});
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot start mpirun-that-does-not-exist-loom-test"),
              std::string::npos)
        << e.what();
  }
  // A missing mpirun names the package to install (PATH emptied of every mpirun).
  const int status = in_helper([] {
    setenv("PATH", "/nonexistent-loom-test", 1);
    try {
      run_job({"mpirun", "-np", "2", "true"});
    } catch (const Error& e) {
      const std::string message = e.what();
      return message.find("cannot start mpirun") != std::string::npos &&
                     message.find("openmpi-bin") != std::string::npos
                 ? 0
                 : 1;
    }
    return 2;
  });
  EXPECT_EQ(exit_code(status), 0);
}

TEST(RunJob, ThrowsWhenExecFails) {
  // Not a program (a directory), and a file marked executable that exec refuses (ENOEXEC: no
  // #! line, not ELF): both are reported as errors, not as a child's exit status.
  try {
    run_job({"/tmp"});
    FAIL() << "expected loom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot start /tmp"), std::string::npos) << e.what();
  }
  char path[] = "/tmp/loom-launcher-test-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "\x01\x02\x03\x04", 4), 4);
  close(fd);
  chmod(path, 0755);
  const std::string file = path;
  const int status = in_helper([&] {
    try {
      run_job({file});
    } catch (const Error& e) {
      const std::string message = e.what();
      std::fprintf(stderr, "%s\n", message.c_str());
      return message.find("cannot start " + file) != std::string::npos &&
                     message.find(std::strerror(ENOEXEC)) != std::string::npos
                 ? 0
                 : 1;
    }
    return 2;
  });
  EXPECT_EQ(exit_code(status), 0);
  unlink(path);
}

// Reads one line from `fd` (the child's "ready" handshake).
std::string read_line(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

// A helper whose run_job runs `script` with stdout on a pipe; returns {helper pid, read end}.
std::pair<pid_t, int> start_helper_job(const std::string& script) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    close(fds[0]);
    dup2(fds[1], STDOUT_FILENO);
    close(fds[1]);
    int code = 99;
    try {
      code = run_job({"sh", "-c", script});
    } catch (...) {
      code = 98;
    }
    _exit(code);
  }
  close(fds[1]);
  return {pid, fds[0]};
}

TEST(RunJob, ForwardsSigintToTheChild) {
  // The child counts the SIGINTs it receives and exits on SIGUSR1 with 40 + that count.
  const auto [pid, out] = start_helper_job(
      "n=0; trap 'n=$((n+1))' INT; trap 'exit $((40+n))' USR1; echo ready;"
      "while :; do sleep 0.05; done");
  ASSERT_EQ(read_line(out), "ready");
  kill(pid, SIGINT);
  usleep(300 * 1000);
  kill(pid, SIGUSR1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  close(out);
  EXPECT_EQ(exit_code(status), 41);
}

TEST(RunJob, ForwardsToTheChildNotToItsProcessGroup) {
  // mpirun and srun relay signals to their ranks themselves; a copy sent to their whole process
  // group would reach helpers twice. The child's background `sleep` shares its group: if it got
  // SIGUSR1 it would die of it (wait → 128 + 10); forwarded to the child alone, the child's trap
  // ends it with SIGTERM (wait → 128 + 15).
  const auto [pid, out] = start_helper_job(
      "sleep 5 & g=$!; trap 'kill $g 2>/dev/null; wait $g; exit $?' USR1; echo ready; wait $g");
  ASSERT_EQ(read_line(out), "ready");
  kill(pid, SIGUSR1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  close(out);
  EXPECT_EQ(exit_code(status), 128 + SIGTERM);
}

TEST(RunJob, ForwardsSigtermAndReportsTheChildsDeath) {
  const auto [pid, out] = start_helper_job("echo ready; while :; do sleep 0.05; done");
  ASSERT_EQ(read_line(out), "ready");
  kill(pid, SIGTERM);  // the helper survives (it forwards) and reports the child's death
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  close(out);
  EXPECT_EQ(exit_code(status), 128 + SIGTERM);
}

TEST(RunJob, RestoresSignalHandlers) {
  const int status = in_helper([] {
    signal(SIGUSR1, SIG_IGN);  // ignored before: stays ignored, also in the child
    if (run_job({"sh", "-c", "kill -USR1 $$; exit 5"}) != 5) return 1;
    struct sigaction action {};
    sigaction(SIGUSR1, nullptr, &action);
    if (action.sa_handler != SIG_IGN) return 2;
    sigaction(SIGTERM, nullptr, &action);
    if (action.sa_handler != SIG_DFL) return 3;
    return 0;
  });
  EXPECT_EQ(exit_code(status), 0);
}

TEST(RunJob, ChildGetsSigtermWhenLoomDies) {
  // The harness becomes the orphaned child's reaper, kills the helper running run_job with
  // SIGKILL (no chance to forward anything), and expects the child to die of SIGTERM.
  const int status = in_helper([] {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return 10;
    const auto [helper, out] = start_helper_job("echo $$; exec sleep 30");
    const pid_t child = static_cast<pid_t>(std::atol(read_line(out).c_str()));
    if (child <= 0) return 11;
    usleep(100 * 1000);  // let sh exec sleep
    kill(helper, SIGKILL);
    int helper_status = 0;
    waitpid(helper, &helper_status, 0);
    int child_status = 0;
    if (waitpid(child, &child_status, 0) != child) return 12;
    return WIFSIGNALED(child_status) && WTERMSIG(child_status) == SIGTERM ? 0 : 13;
  });
  EXPECT_EQ(exit_code(status), 0);
}

TEST(CpuFeatures, NamesWhatTheCpuLacks) {
  const auto has = [](const std::string& name) { return name == "avx2" || name == "fma"; };
  EXPECT_EQ(cpu_features_missing("avx,avx2,fma,avx512f", has), "avx,avx512f");
  EXPECT_EQ(cpu_features_missing("avx2,fma", has), "");
  EXPECT_EQ(cpu_features_missing("", has), "");
  // This machine runs this test, so it has what the build uses; an unknown name it has not.
  EXPECT_TRUE(cpu_supports("sse4.2"));
  EXPECT_TRUE(cpu_supports("avx2"));  // the default build's level: this machine runs it
  EXPECT_TRUE(cpu_supports("f16c"));
  EXPECT_FALSE(cpu_supports("no-such-extension"));
}

}  // namespace
}  // namespace loom
