// Starting a multi-rank job: how this process was launched, the mpirun / srun argument vector
// for a job of N ranks, and running that job with signals forwarded.
//
//   loom::LaunchEnvironment env = loom::detect_launch_environment(loom::process_environment());
//   if (!env.is_worker && world > 1) {
//     loom::LaunchHost host = loom::this_host();
//     return loom::run_job(loom::launch_command(world, worker_args, env, host));
//   }
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace loom {

// Reads one environment variable; nullptr when unset. Tests pass their own.
using GetEnv = std::function<const char*(const char*)>;
GetEnv process_environment();

struct LaunchEnvironment {
  // This process is one rank of a job that mpirun or srun started (OMPI_COMM_WORLD_SIZE,
  // PMIX_RANK, PMI_RANK, …): it must initialise MPI and take its rank from MPI.
  bool is_worker = false;
  int launcher_world_size = 0;  // the job size the launcher announced, 0 when unknown
  // Inside a Slurm allocation but not inside a job step (SLURM_JOB_ID set, no SLURM_STEP_ID):
  // a multi-rank job is started with srun.
  bool in_slurm_allocation = false;
};

// Throws loom::Error for a launch that cannot work, e.g. srun started several tasks without an
// MPI plugin (no PMI/PMIx variables): every task would believe it is alone.
LaunchEnvironment detect_launch_environment(const GetEnv& env);

struct LaunchHost {
  int cores = 1;             // usable cores on this machine
  bool is_root = false;      // effective uid 0 (Open MPI's mpirun then needs --allow-run-as-root)
  std::string executable;    // absolute path of the loom binary (/proc/self/exe)
};
LaunchHost this_host();

// The argument vector that starts `world` ranks each running `executable worker_args...`:
// srun (--ntasks, --kill-on-bad-exit, --mpi=pmix) inside a Slurm allocation, else mpirun (-np,
// --oversubscribe when world > cores, --allow-run-as-root as root). Never a shell string.
std::vector<std::string> launch_command(int world, const std::vector<std::string>& worker_args,
                                        const LaunchEnvironment& env, const LaunchHost& host);

// Runs argv[0] (looked up on PATH) with argv, forwarding SIGINT, SIGTERM, SIGHUP, SIGQUIT,
// SIGUSR1 and SIGUSR2 to it, and returns its exit status (128 + signal when it was killed).
// Throws loom::Error when the program cannot be started (e.g. mpirun not installed).
int run_job(const std::vector<std::string>& argv);

}  // namespace loom
