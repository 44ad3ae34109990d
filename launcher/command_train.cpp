#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "base/error.h"
#include "core/config.h"
#include "core/parallel_layout.h"
#include "core/trainer.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/hosts.h"
#include "launcher/spawn.h"
#include "parallel/flight_recorder.h"
#include "parallel/groups.h"
#include "parallel/mpi_runtime.h"
#include "parallel/placement.h"

namespace loom {
namespace {

constexpr const char* kHelp =
    R"(usage: loom train CONFIG [--set path.to.field=value]... [--run-dir DIR] [--resume]
                  [--hostfile FILE | --hosts a:4,b:4] [--allow-cross-node-tp]

Trains the model CONFIG (a text-format loom.config.RunConfig, see configs/loom.proto) describes.

  --set k=v      override one config field, e.g. --set optim.lr=1e-3 (repeatable, applied in order)
  --run-dir DIR  where config.textproto, metrics.jsonl, train.log and checkpoints/ go
                 (default: runs/<config name>-<date>-<time>); never overwritten without --resume
  --resume       continue the run in --run-dir from its newest checkpoint
  --oversubscribe  start the layout's ranks even when they are more than 8 per core of this
                 machine (without it such a layout is refused: it would crawl, and thousands
                 of ranks exhaust memory and process limits)
  --hostfile FILE  start the ranks on the nodes of an Open MPI hostfile (`host slots=N` lines)
                 through mpirun; ranks fill one node's slots, then the next
  --hosts LIST     the same from a list, e.g. --hosts node1:4,node2:4
  --allow-cross-node-tp  start even when a tensor-parallel group spans nodes (refused without
                 it: tp all-reduces every layer's activations, and belongs inside a node)

SIGUSR1 stops the run after the current step with a checkpoint (exit status 75); continue it
with --resume. SIGUSR2 makes every rank dump its flight recorder (its last communication
operations and step phase, logging.flight_entries) to RUN_DIR/flight/rank_R.json and go on;
ranks dump by themselves on a collective timeout or a fatal error. `loom doctor RUN_DIR` reads
the dumps. Under `loom train`'s own launcher, mpirun or srun, every rank receives the signals.

With parallel.dp (× tp × pp × sp) > 1, loom starts that many ranks itself: through srun inside a
Slurm allocation, else through mpirun. Started by mpirun or srun directly (mpirun -np N loom train
CONFIG ...), each process is one rank and takes its rank from MPI; N must equal the layout's size.
Every rank must see the same data set (checked at start: shard names, sizes and the first
header's checksum) and the same run directory, on a file system every node shares.
)";

// Ranks per core beyond which loom train refuses to start a layout without --oversubscribe.
constexpr int kMaxRanksPerCore = 8;

// Exit status of a run stopped early by SIGUSR1 (EX_TEMPFAIL: continue it with --resume).
constexpr int kExitStopped = 75;

// How long a failing rank waits for the other ranks' flight dumps before it ends the job (it
// stops waiting as soon as all are written; a dead or stopped rank writes none).
constexpr double kFlightDumpGraceS = 5;

// SIGUSR1 asks a run to stop cleanly after the current step, with a checkpoint (Slurm's
// `--signal=B:USR1@SECONDS` before a time limit or preemption; mpirun and srun pass it on to
// every rank). The flag is process-global because a signal handler can reach nothing else.
std::atomic<int> stop_request{0};
// SIGUSR2 asks for a flight dump: the handler only counts, a FlightDumper thread writes.
std::atomic<int> flight_signals{0};

void on_stop_signal(int signal) { stop_request.store(signal); }
void on_flight_signal(int) { flight_signals.fetch_add(1); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  action.sa_handler = on_stop_signal;
  sigaction(SIGUSR1, &action, nullptr);
  action.sa_handler = on_flight_signal;
  sigaction(SIGUSR2, &action, nullptr);
}

// This process's flight recorder and the thread that dumps it on request (none when
// logging.flight_entries is 0). The recorder outlives the MPI runtime that records into it.
struct Flight {
  std::unique_ptr<FlightRecorder> recorder;
  std::unique_ptr<FlightDumper> dumper;
};

Flight flight_create(const config::RunConfig& cfg) {
  Flight flight;
  if (cfg.logging().flight_entries() == 0) return flight;
  flight.recorder = std::make_unique<FlightRecorder>(cfg.logging().flight_entries());
  flight.dumper = std::make_unique<FlightDumper>(*flight.recorder, &flight_signals);
  return flight;
}

void flight_set_rank(FlightRecorder& rec, const std::string& run_dir, const ProcessGroups& g) {
  FlightDumpTarget target;
  target.path = flight_dump_path(run_dir, g.rank);
  target.rank = g.rank;
  target.world_size = g.mesh.world_size();
  const int mesh[4] = {g.mesh.dp, g.mesh.pp, g.mesh.sp, g.mesh.tp};
  const int coord[4] = {g.coord.dp, g.coord.pp, g.coord.sp, g.coord.tp};
  std::copy(mesh, mesh + 4, target.mesh);
  std::copy(coord, coord + 4, target.coord);
  flight_set_target(rec, target);
}

// A rank that failed: dumps its recorder, asks every other rank to dump theirs and waits a
// little for them, so `loom doctor` sees the whole job before MPI_Abort ends it.
void flight_dump_on_failure(FlightRecorder& rec, MpiRuntime& mpi, const std::string& run_dir,
                            const std::string& label, const std::string& what) {
  if (!std::filesystem::is_directory(run_dir)) return;  // failed before the run began
  flight_set_error(rec, what);
  const std::string error = flight_dump(rec, "error");
  const auto since = mpi_request_flight_dumps(mpi);
  const int world = mpi_world_size(mpi);
  const int written = flight_wait_for_dumps(run_dir, world, since, kFlightDumpGraceS);
  std::cerr << "loom train: " << label << " flight recorder: "
            << (error.empty() ? "" : "this rank's dump failed (" + error + "); ") << written
            << " of " << world << " ranks' dumps in " << flight_dump_dir(run_dir)
            << "; explain them with: loom doctor " << run_dir << std::endl;
}

int print_done(const TrainSummary& summary) {
  if (summary.stopped_by_signal) {
    std::cout << "stopped early (signal " << summary.stopped_by_signal << ") after "
              << summary.steps << " steps; checkpoint " << summary.last_checkpoint
              << "; continue with --resume --run-dir " << summary.run_dir << "\n";
    return kExitStopped;
  }
  std::cout << "done: " << summary.steps << " steps, final loss " << summary.last_loss;
  if (summary.last_val_loss >= 0) std::cout << ", val_loss " << summary.last_val_loss;
  std::cout << "; run directory " << summary.run_dir << "\n";
  return 0;
}

// The size and last 4 KiB of a file ("" when it does not exist): what tells whether a job
// appended to it.
std::string file_tail(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(std::filesystem::symlink_status(path, ec))) return "";
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff from = std::max<std::streamoff>(0, size - 4096);
  std::string tail(static_cast<size_t>(size - from), '\0');
  in.seekg(from);
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  return std::to_string(size) + ":" + tail;
}

std::string default_run_dir(const std::string& config_path) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + std::filesystem::path(config_path).stem().string() + "-" + stamp;
}

// Throws unless every tp group is inside one node or --allow-cross-node-tp was given.
void check_tp_placement(const Mesh& mesh, const Placement& placement, const Args& args) {
  const std::string problem = cross_node_tp_problem(mesh, placement);
  if (!problem.empty() && !args.flag("--allow-cross-node-tp"))
    throw Error(problem + " (placement: " + placement_summary(placement) + ")");
}

// One rank of a job that mpirun or srun started: the rank comes from MPI. Any failure ends the
// whole job (MPI_Abort) after printing which rank failed and why; nothing is left hanging.
int train_worker(const config::RunConfig& cfg, const std::string& config_path, const Args& args,
                 const Mesh& mesh) {
  install_signal_handlers();  // before MPI starts: a SIGUSR1 now must not kill the rank
  Flight flight = flight_create(cfg);
  MpiRuntimeOptions mpi_options;
  mpi_options.timeout_s = cfg.parallel().collective_timeout_s();
  const char* fault = std::getenv("LOOM_FAULT");
  mpi_options.fault = parse_fault_injection(fault ? fault : "");
  mpi_options.flight = flight.recorder.get();
  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init(mpi_options);
  std::string label = "[rank " + std::to_string(mpi_world_rank(*mpi)) + "]";
  std::string flight_run_dir;  // set once the run directory is known: dumps go there
  try {
    ProcessGroups groups = process_groups_create(mpi.get(), mesh);
    label = groups.label();
    // Placement as the ranks found it: mpirun or srun started by hand may put a tp group across
    // nodes even where loom's own launch would have refused.
    check_tp_placement(mesh, groups.placement, args);
    // Every rank must write to the same run directory: rank 0's choice (a default one carries
    // the time) is broadcast.
    std::string run_dir = args.value("--run-dir", default_run_dir(config_path));
    int64_t length = static_cast<int64_t>(run_dir.size());
    groups.world->broadcast(&length, 1, DataType::kInt64, 0);
    run_dir.resize(static_cast<size_t>(length));
    groups.world->broadcast(run_dir.data(), run_dir.size(), DataType::kByte, 0);
    if (flight.recorder) {
      flight_set_rank(*flight.recorder, run_dir, groups);
      flight_run_dir = run_dir;
    }
    TrainOptions options;
    options.run_dir = run_dir;
    options.resume = args.flag("--resume");
    options.groups = &groups;
    options.stop_request = &stop_request;
    options.flight = flight.recorder.get();
    // train() returns once every rank has seen the last checkpoint written (then rank 0's tensor
    // group may still be sampling; MPI_Finalize waits for it without a timeout).
    const TrainSummary summary = train(cfg, options);
    const int status = groups.rank == 0 ? print_done(summary) : 0;
    return summary.stopped_by_signal ? kExitStopped : status;
  } catch (const std::exception& e) {
    std::cerr << "loom train: error: " << label << " " << e.what() << std::endl;
    if (!flight_run_dir.empty())
      flight_dump_on_failure(*flight.recorder, *mpi, flight_run_dir, label, e.what());
    mpi_abort(*mpi, 1);
  }
}

// The nodes `loom train` will start ranks on (--hostfile, --hosts, or the Slurm allocation; empty:
// this host alone), checked against the layout before anything starts: enough slots, and no tp
// group across nodes unless --allow-cross-node-tp.
std::vector<NodeSlots> job_nodes(const Args& args, const LaunchEnvironment& env, const Mesh& mesh) {
  if (args.has("--hostfile") && args.has("--hosts"))
    throw Error("give either --hostfile or --hosts, not both");
  const bool named = args.has("--hostfile") || args.has("--hosts");
  if (named && env.in_slurm_allocation)
    throw Error("inside a Slurm allocation the ranks go on the allocation's nodes through srun; "
                "drop --hostfile/--hosts (or choose the nodes with sbatch/salloc -N, -w)");
  if (named && mesh.world_size() == 1)
    throw Error("--hostfile/--hosts start ranks on several nodes, but this layout is a single "
                "rank (parallel.dp × tp × pp × sp = 1)");
  const std::vector<NodeSlots> nodes =
      args.has("--hostfile") ? hostfile_read(args.value("--hostfile", ""))
      : args.has("--hosts")  ? hosts_parse(args.value("--hosts", ""))
      : env.in_slurm_allocation && mesh.world_size() > 1 ? slurm_allocation_nodes(process_environment())
                                                         : std::vector<NodeSlots>{};
  if (nodes.empty()) return nodes;
  const Placement placement = placement_fill(nodes, mesh.world_size());
  check_tp_placement(mesh, placement, args);
  std::cerr << "loom: placement " << placement_summary(placement) << std::endl;
  return nodes;
}

}  // namespace

int command_train(int argc, char** argv) {
  const Args args = parse_args(
      "train", argv, argc,
      {{"--set", true}, {"--run-dir", false}, {"--hostfile", false}, {"--hosts", false}},
      {"--resume", "--oversubscribe", "--allow-cross-node-tp"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one CONFIG file (see loom train --help)");
  const LaunchEnvironment env = detect_launch_environment(process_environment());
  const std::string config_path = args.positional[0];
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  if (args.flag("--resume") && !args.has("--run-dir"))
    throw Error("--resume needs --run-dir naming the run to continue");
  const Mesh mesh = parallel_layout(cfg).mesh;
  if (env.is_worker) {
    if (args.has("--hostfile") || args.has("--hosts"))
      throw Error("--hostfile and --hosts are for `loom train` starting the ranks itself; this "
                  "process is already a rank (started by mpirun or srun): give the hosts to "
                  "mpirun instead");
    return train_worker(cfg, config_path, args, mesh);
  }
  const std::vector<NodeSlots> nodes = job_nodes(args, env, mesh);

  const std::string run_dir = args.value("--run-dir", default_run_dir(config_path));
  if (mesh.world_size() == 1) {
    // One process dumps its recorder (its phase) on SIGUSR2 only: on an error its message says
    // all a dump could, there being no other rank to line up with.
    install_signal_handlers();
    Flight flight = flight_create(cfg);
    TrainOptions options;
    options.run_dir = run_dir;
    options.resume = args.flag("--resume");
    options.stop_request = &stop_request;
    options.flight = flight.recorder.get();
    if (flight.recorder) {
      FlightDumpTarget target;
      target.path = flight_dump_path(run_dir, 0);
      flight_set_target(*flight.recorder, target);
    }
    return print_done(train(cfg, options));
  }
  // Several ranks: start them with this very command line, the run directory made explicit.
  std::vector<std::string> worker_args = {"train", config_path};
  for (const std::string& assignment : args.values("--set")) {
    worker_args.push_back("--set");
    worker_args.push_back(assignment);
  }
  worker_args.insert(worker_args.end(), {"--run-dir", run_dir});
  if (args.flag("--resume")) worker_args.push_back("--resume");
  if (args.flag("--allow-cross-node-tp")) worker_args.push_back("--allow-cross-node-tp");
  const LaunchHost host = this_host();
  if (nodes.empty() && mesh.world_size() > kMaxRanksPerCore * host.cores &&
      !args.flag("--oversubscribe"))
    throw Error("the layout needs " + std::to_string(mesh.world_size()) +
                " ranks (parallel.dp × tp × pp × sp) but this machine has " +
                std::to_string(host.cores) + " cores; more than " +
                std::to_string(kMaxRanksPerCore) +
                " ranks per core would crawl and can exhaust memory and process limits. Lower "
                "the layout, run it in a Slurm allocation, or pass --oversubscribe to start "
                "them anyway");
  // OpenMP threads of ranks that share cores must sleep, not spin, while they wait (read by
  // each rank's OpenMP runtime at start-up).
  if (mesh.world_size() > host.cores) setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  LaunchHosts hosts;
  if (!env.in_slurm_allocation && !nodes.empty()) {
    hosts.hostfile = args.value("--hostfile", "");
    hosts.hosts = args.value("--hosts", "");
    hosts.workdir = std::filesystem::current_path().string();
    hosts.forward_env = rank_environment(environ);
    // mpirun's daemons on the other nodes notice within seconds that their connection to mpirun
    // is dead (a node cut off) and kill their ranks; Open MPI's default gives up after minutes,
    // leaving ranks behind. A site's or user's own setting wins.
    setenv("OMPI_MCA_oob_tcp_keepalive_time", "2", 0);
    setenv("OMPI_MCA_oob_tcp_keepalive_intvl", "1", 0);
    setenv("OMPI_MCA_oob_tcp_keepalive_probes", "3", 0);
  }
  const std::vector<std::string> command =
      launch_command(mesh.world_size(), worker_args, env, host, hosts);
  std::string shown;
  for (const std::string& a : command) shown += (shown.empty() ? "" : " ") + a;
  std::cerr << "loom: starting " << mesh.world_size() << " ranks: " << shown << std::endl;
  const std::string metrics = run_dir + "/metrics.jsonl";
  const std::string before = file_tail(metrics);
  const int status = run_job(command);
  // Rank 0 appends to metrics.jsonl after every step: a job that ends well without changing it
  // trained nothing (a launcher that started no rank, or other programs than loom).
  if (status == 0 && file_tail(metrics) == before)
    throw Error("the launcher (" + command.front() + ") ended with status 0 but no rank " +
                "trained: " + metrics + " was not written; check that it starts " +
                std::to_string(mesh.world_size()) + " loom ranks (mpirun -np N loom train ...)");
  return status;
}

}  // namespace loom
