// Starting a multi-rank job: how this process was launched, the mpirun / srun argument vector
// for a job of N ranks, and running that job with signals forwarded.
//
//   loom::LaunchEnvironment env = loom::detect_launch_environment(loom::process_environment());
//   if (!env.is_worker && world > 1) {
//     loom::LaunchHost host = loom::this_host();
//     return loom::run_job(loom::launch_command(world, worker_args, env, host));
//   }
//
// Environment variables read (all by detect_launch_environment):
//   OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK   this process is a rank (Open MPI, PMIx, PMI-1/2)
//   OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_SIZE,  the job size a launcher announced
//   SLURM_STEP_NUM_TASKS
//   SLURM_JOB_ID, SLURM_STEP_ID                 inside a Slurm allocation / inside a job step
//   SLURM_CPUS_PER_TASK                         CPUs per task to request again from srun
//   SLURM_NTASKS_PER_NODE                       tasks per node to request again from srun
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
  // PMIX_RANK, PMI_RANK): it must initialise MPI and take its rank from MPI.
  bool is_worker = false;
  int launcher_world_size = 0;  // the job size the launcher announced, 0 when unknown
  // Inside a Slurm allocation but not inside a job step (SLURM_JOB_ID set, no SLURM_STEP_ID):
  // a multi-rank job is started with srun. A batch script (sbatch) and an salloc shell are such
  // places: Slurm sets SLURM_STEP_ID only in the processes srun starts (checked on Slurm 22.05;
  // a non-numeric or reserved step id such as "batch" or 4294967294 also counts as no step).
  bool in_slurm_allocation = false;
  // SLURM_CPUS_PER_TASK of the allocation (0 when unset). Since Slurm 22.05 srun does not
  // inherit --cpus-per-task from sbatch/salloc, so launch_command passes it again.
  int slurm_cpus_per_task = 0;
  // SLURM_NTASKS_PER_NODE of the allocation (0 when unset: sbatch sets it for --ntasks-per-node),
  // passed to srun so that ranks fill each node's tasks before the next node's.
  int slurm_ntasks_per_node = 0;
};

// Throws loom::Error for a launch that cannot work: srun started several tasks without an MPI
// plugin (a job step of N > 1 tasks but no PMI/PMIx variables), where every task would believe
// it is alone and they would all write the same run directory.
LaunchEnvironment detect_launch_environment(const GetEnv& env);

struct LaunchHost {
  int cores = 1;           // cores this process may run on (its CPU affinity mask)
  bool is_root = false;    // effective uid 0 (Open MPI's mpirun then needs --allow-run-as-root)
  std::string executable;  // absolute path of the loom binary (/proc/self/exe)
};
LaunchHost this_host();

// The nodes to start ranks on with mpirun (empty: this host alone). Ranks fill one node's slots,
// then the next (--map-by slot).
struct LaunchHosts {
  std::string hostfile;  // an Open MPI hostfile, passed as --hostfile
  std::string hosts;     // "a:4,b:4", passed as --host
  std::string workdir;   // the directory the ranks start in on every node (--wdir)
  // Environment variables to pass to ranks on other nodes (-x NAME): mpirun's ssh starts them
  // with its own environment, not the caller's.
  std::vector<std::string> forward_env;
  bool empty() const { return hostfile.empty() && hosts.empty(); }
};

// The names of the environment variables loom's ranks read (LOOM_*, OMP_*, OPENBLAS_*) that are
// set in `environ`-style `entries` ("NAME=value").
std::vector<std::string> rank_environment(char** entries);

// The argument vector that starts `world` ranks each running `executable worker_args...`.
// Inside a Slurm allocation:
//   srun --ntasks=N --kill-on-bad-exit=1 --quit-on-interrupt --mpi=pmix [--cpus-per-task=K]
//        [--ntasks-per-node=K --distribution=block]
// (one SIGINT stops the step: without --quit-on-interrupt srun only prints its status).
// With hosts, on them:
//   mpirun -np N [--allow-run-as-root] (--hostfile F | --host a:4,b:4) --map-by slot
//          --bind-to none --wdir DIR [-x NAME]...
// Otherwise, on this host:
//   mpirun -np N [--allow-run-as-root] --oversubscribe --bind-to none        when N > cores
//   mpirun -np N [--allow-run-as-root] --map-by slot:PE=cores/N --bind-to core   otherwise
// (each rank then owns cores/N cores, so runtime.threads = 0 gives it that many threads;
// Open MPI's default would bind every rank to a single core for N ≤ 2). Never a shell string.
std::vector<std::string> launch_command(int world, const std::vector<std::string>& worker_args,
                                        const LaunchEnvironment& env, const LaunchHost& host,
                                        const LaunchHosts& hosts = {});

struct JobOptions {
  // The first SIGINT or SIGTERM is passed on as SIGUSR1 (every rank stops after its step with a
  // checkpoint: mpirun and srun would end the job at once), a repeat within kRepeatWindowS is
  // dropped, and a later one is passed on as it is.
  bool graceful_stop = false;
  // Set to the last SIGINT, SIGTERM, SIGHUP or SIGQUIT this process received meanwhile (0: none).
  int* received_signal = nullptr;
  // The job's stderr passes through this process, without Open MPI's "MPI_ABORT was invoked"
  // block and help-aggregation notes: loom's ranks say what failed before they abort.
  bool filter_mpi_notices = false;
};

// Runs argv[0] (looked up on PATH) with argv and returns its exit status, 128 + signal when a
// signal killed it (or when a SIGINT, SIGTERM, SIGHUP or SIGQUIT passed on ended it). The child
// runs in its own process group with stdin from /dev/null (so a Ctrl-C at the terminal reaches only
// this process, and the child never stops on reading the terminal) and is sent SIGTERM if this
// process dies. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received meanwhile are
// forwarded once each to the child's pid (mpirun and srun relay them to their ranks; the ranks run
// in their own process groups). The previous handlers are restored on return. One run_job at a time
// per process. Throws loom::Error when the program cannot be started (e.g. mpirun not installed).
int run_job(const std::vector<std::string>& argv, const JobOptions& options = {});

// The file execv will run for `program`: itself when it names a path, else the first
// executable regular file of that name on PATH (as execvp searches, but resolved before fork so
// that a missing program is an error here, not in the child). Throws loom::Error saying it is
// missing.
std::string find_program(const std::string& program);

}  // namespace loom
