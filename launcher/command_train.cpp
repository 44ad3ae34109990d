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
#include <sstream>
#include <thread>

#include "base/error.h"
#include "core/config.h"
#include "core/parallel_layout.h"
#include "core/pipeline.h"
#include "core/run_dir.h"
#include "core/run_inputs.h"
#include "core/shared_files.h"
#include "core/trainer.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "launcher/hosts.h"
#include "launcher/restarts.h"
#include "launcher/spawn.h"
#include "launcher/train_signals.h"
#include "parallel/flight_recorder.h"
#include "parallel/groups.h"
#include "parallel/mpi_runtime.h"
#include "parallel/placement.h"

namespace loom {
namespace {

constexpr const char* kHelp =
    R"(usage: loom train CONFIG [--set path.to.field=value]... [--run-dir DIR] [--resume]
                  [--init-from CHECKPOINT|RUN_DIR]
                  [--max-restarts N] [--hostfile FILE | --hosts a:4,b:4] [--allow-cross-node-tp]
       loom train --resume --run-dir DIR [--set path.to.field=value]...

Trains the model CONFIG (a text-format loom.config.RunConfig, see configs/loom.proto) describes.
Data paths written in CONFIG are relative to CONFIG's folder; those given with --set, to the
working directory.

  --set k=v      override one config field, e.g. --set optim.lr=1e-3 (repeatable, applied in order)
  --run-dir DIR  where config.textproto, metrics.jsonl, train.log and checkpoints/ go
                 (default: runs/<config name>-<date>-<time>); never overwritten without --resume
  --resume       continue the run in --run-dir from its newest checkpoint (a Slurm job that was
                 requeued, SLURM_RESTART_COUNT ≥ 1, continues its --run-dir without it); without
                 CONFIG, with the run's own DIR/config.textproto
  --init-from C  start from the weights of checkpoint C (or of the newest checkpoint of the run
                 directory C: a run of loom's, or one loom import wrote) instead of random ones;
                 the optimizer and the step start afresh, and CONFIG's model section must be
                 C's. With --resume, a checkpoint of the run's own wins
  --max-restarts N  when a rank dies, hangs past parallel.collective_timeout_s or loses its node,
                 start the job again from its newest checkpoint, up to N times, waiting 1, 2, 4 ...
                 60 s between tries (default: train.max_restarts); an error a rank reports
                 (config, data, files) is not retried. LOOM_FAULT applies to the first try only.
  --oversubscribe  start the layout's ranks even when they are more than 8 per core of this
                 machine (without it such a layout is refused: it would crawl, and thousands
                 of ranks exhaust memory and process limits)
  --hostfile FILE  start the ranks on the nodes of an Open MPI hostfile (`host slots=N` lines)
                 through mpirun; ranks fill one node's slots, then the next
  --hosts LIST     the same from a list, e.g. --hosts node1:4,node2:4
  --allow-cross-node-tp  start even when a tensor-parallel group spans nodes (refused without
                 it: tp all-reduces every layer's activations, and belongs inside a node)

Signals (to loom train, or to every rank under mpirun or srun):
  SIGTERM, SIGINT, SIGUSR1  every rank stops after its current step, a checkpoint is written,
                 and the run exits with status 75; continue it with --resume. A second SIGTERM
                 or SIGINT (more than 2 s later) stops at once, as SIGHUP and SIGQUIT do: the
                 newest complete checkpoint stays intact and train.log gets a last line.
  SIGUSR2        every rank dumps its flight recorder (its last communication operations and
                 step phase, logging.flight_entries) to RUN_DIR/flight/rank_R.json and goes on;
                 ranks dump by themselves on a collective timeout or a fatal error. `loom doctor
                 RUN_DIR` reads the dumps.
Exit status: 0 done; 1 an error (loom says which); 75 stopped after a step with a checkpoint;
128 + N stopped at once by signal N. A rank started by mpirun or srun directly ends its job
with 65 for an error it reports and 76 for a communication failure (a collective timed out or
a peer was lost).

With parallel.dp (× tp × pp × sp) > 1, loom starts that many ranks itself: through srun inside a
Slurm allocation, else through mpirun. Started by mpirun or srun directly (mpirun -np N loom train
CONFIG ...), each process is one rank and takes its rank from MPI; N must equal the layout's size.
Every rank must be started with the same config, flags and loom build (checked at start), see
the same data set (shard names, sizes and the first header's checksum) and the same run directory, on a file system every node shares.
)";

// How long a rank other than 0 that failed at start-up waits before it reports: rank 0, failing
// the same way, reports and ends the job first.
constexpr std::chrono::seconds kStartupErrorDelay{2};

// How long a failing rank waits for the other ranks' flight dumps before it ends the job (it
// stops waiting as soon as all are written; a dead or stopped rank writes none).
constexpr double kFlightDumpGraceS = 5;

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
  flight.dumper = std::make_unique<FlightDumper>(*flight.recorder, &flight_signal_count());
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
  // One write, so the lines of ranks failing together do not interleave.
  std::ostringstream line;
  line << "loom train: " << label << " flight recorder: "
       << (error.empty() ? "" : "this rank's dump failed (" + error + "); ") << written << " of "
       << world << " ranks' dumps in " << flight_dump_dir(run_dir)
       << "; explain them with: loom doctor " << run_dir << "\n";
  std::cerr << line.str() << std::flush;
}

// The exit status of a finished run (its last line, in train.log too, says how it ended).
int done_status(const TrainSummary& summary) {
  return summary.stopped_by_signal ? kExitStopped : 0;
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

// LOOM_FAULT (parallel/mpi_runtime.h), checked against the groups loom train has.
FaultInjection train_fault_injection() {
  const char* spec = std::getenv("LOOM_FAULT");
  FaultInjection fault = parse_fault_injection(spec ? spec : "");
  const std::string& group = fault.group;
  if (fault.action != FaultInjection::Action::kNone &&
      !(group == "world" || group == "tp" || group == "sp" || group == "dp" || group == "pp" ||
        group == "dp_sp" || group.starts_with("replica_")))
    throw Error("LOOM_FAULT group=" + group + " names no group of loom train: its groups are " +
                "world, tp, sp, dp, pp, dp_sp (the gradient reduction) and replica_S_T... (the " +
                "pipeline stages S, T, ... that hold one shared weight)");
  return fault;
}

// The CONFIG argument, or for `--resume --run-dir DIR` without one the run's own
// DIR/config.textproto (the config it ran with, --set overrides included).
std::string train_config_path(const Args& args) {
  if (args.positional.size() == 1) return args.positional[0];
  if (args.positional.empty() && args.flag("--resume")) {
    const std::string saved = args.value("--run-dir", "") + "/config.textproto";
    std::error_code ec;
    if (!std::filesystem::exists(saved, ec))
      throw Error("--resume --run-dir " + args.value("--run-dir", "") + ": " + saved +
                  " does not exist, so this is no run to continue; give the CONFIG it was " +
                  "started with");
    return saved;
  }
  throw Error("expected exactly one CONFIG file, got " + std::to_string(args.positional.size()) +
              (args.positional.size() > 1 ? " (" + args.positional[0] + ", " + args.positional[1] +
                                                (args.positional.size() > 2 ? ", ..." : "") + ")"
                                          : "") +
              "; to continue a run with its own config: loom train --resume --run-dir DIR (see " +
              "loom train --help)");
}

// --resume, or a requeued Slurm job (SLURM_RESTART_COUNT ≥ 1) whose --run-dir already holds the
// run: a batch script Slurm requeues after a preemption goes on by itself.
bool resume_wanted(const Args& args, const std::string& run_dir, bool say) {
  if (args.flag("--resume")) return true;
  const char* requeued = std::getenv("SLURM_RESTART_COUNT");
  if (!args.has("--run-dir") || !requeued || std::atoi(requeued) < 1) return false;
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::path(run_dir) / "config.textproto", ec))
    return false;
  if (say)
    std::cerr << "loom: Slurm requeued this job (SLURM_RESTART_COUNT=" << requeued
              << "): continuing the run in " << run_dir << std::endl;
  return true;
}

// The options every training process passes to train(): the run, the signals it handles, its
// flight recorder, and whether it is an automatic restart (--restart, set by loom itself).
TrainOptions train_options(const Args& args, const std::string& run_dir, bool resume,
                           const Flight& flight) {
  TrainOptions options;
  options.run_dir = run_dir;
  options.resume = resume;
  options.init_from = args.value("--init-from", "");
  options.signals = &train_signals();
  options.flight = flight.recorder.get();
  options.restart = static_cast<int>(args.integer("--restart", 0));
  options.restart_cause = args.value("--restart-cause", "");
  return options;
}

// One rank of a job that mpirun or srun started: the rank comes from MPI. Any failure ends the
// whole job (MPI_Abort) after printing which rank failed and why; nothing is left hanging. The
// job's status says whether a restart could help (launcher/restarts.h).
int train_worker(const config::RunConfig& cfg, const std::string& config_path, const Args& args,
                 const Mesh& mesh) {
  train_signals_install();  // before MPI starts: a signal now must not kill the rank silently
  Flight flight = flight_create(cfg);
  MpiRuntimeOptions mpi_options;
  mpi_options.timeout_s = cfg.parallel().collective_timeout_s();
  mpi_options.fault = train_fault_injection();
  mpi_options.flight = flight.recorder.get();
  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init(mpi_options);
  std::string label = "[rank " + std::to_string(mpi_world_rank(*mpi)) + "]";
  std::string flight_run_dir;  // set once the run directory is known: dumps go there
  bool started = false;        // training began (TrainOptions::on_started)
  try {
    {  // before the groups, which the config shapes: every rank must have been started alike
      const std::unique_ptr<Communicator> start = mpi_world(*mpi, "start");
      const std::string flags = std::string(args.flag("--resume") ? "--resume " : "") +
                                (args.flag("--allow-cross-node-tp") ? "--allow-cross-node-tp" : "");
      check_same_settings(*start, rank_settings(cfg, flags));
    }
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
    TrainOptions options =
        train_options(args, run_dir, resume_wanted(args, run_dir, groups.rank == 0), flight);
    options.groups = &groups;
    options.on_started = [&started] { started = true; };
    // train() returns once every rank has seen the last checkpoint written (then rank 0's tensor
    // group may still be sampling; MPI_Finalize waits for it without a timeout).
    const TrainSummary summary = train(cfg, options);
    return done_status(summary);
  } catch (const std::exception& e) {
    const bool comm = dynamic_cast<const CommError*>(&e) != nullptr;
    if (!started && !comm) {
      // A start-up error (config, data, run directory), usually the same on every rank: rank 0
      // says it once; another rank speaks only if rank 0 has not ended the job meanwhile (it
      // stopped on something else, or waits in a collective). No flight dumps: there is no
      // communication to explain.
      if (mpi_world_rank(*mpi) != 0) std::this_thread::sleep_for(kStartupErrorDelay);
      std::cerr << "loom train: error: " << (mpi_world_rank(*mpi) == 0 ? "" : label + " ")
                << e.what() << std::endl;
      mpi_abort(*mpi, kExitRankError);
    }
    std::cerr << "loom train: error: " << label << " " << e.what() << std::endl;
    if (!flight_run_dir.empty())
      flight_dump_on_failure(*flight.recorder, *mpi, flight_run_dir, label, e.what());
    mpi_abort(*mpi, comm ? kExitCommFailure : kExitRankError);
  }
}

// A single-process run in this process.
int train_here(const config::RunConfig& cfg, const Args& args, const std::string& run_dir) {
  // One process dumps its recorder (its phase) on SIGUSR2 only: on an error its message says
  // all a dump could, there being no other rank to line up with.
  train_signals_install();
  Flight flight = flight_create(cfg);
  const TrainOptions options =
      train_options(args, run_dir, resume_wanted(args, run_dir, true), flight);
  if (flight.recorder) {
    FlightDumpTarget target;
    target.path = flight_dump_path(run_dir, 0);
    flight_set_target(*flight.recorder, target);
  }
  return done_status(train(cfg, options));
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

// Throws unless the layout's ranks fit where they would start: this machine's cores (without
// --oversubscribe) and memory, when no hostfile or Slurm allocation spreads them.
void check_machine_fits(const config::RunConfig& cfg, const Args& args,
                        const LaunchEnvironment& env, const Mesh& mesh,
                        const std::vector<NodeSlots>& nodes) {
  const LaunchHost host = this_host();
  if (nodes.empty() && mesh.world_size() > kLocalRanksPerCore * host.cores &&
      !args.flag("--oversubscribe"))
    throw Error("the layout needs " + std::to_string(mesh.world_size()) +
                " ranks (parallel.dp × tp × pp × sp) but this machine has " +
                std::to_string(host.cores) + " cores; more than " +
                std::to_string(kLocalRanksPerCore) +
                " ranks per core would crawl and can exhaust memory and process limits. Lower "
                "the layout, run it in a Slurm allocation, or pass --oversubscribe to start "
                "them anyway");
  // Ranks this machine alone would hold must fit its memory: known before any is started (each
  // rank checks again, on its own node or GPU).
  if (nodes.empty() && !env.in_slurm_allocation &&
      cfg.runtime().device() == config::RuntimeConfig::CPU) {
    const std::string too_big = memory_problem(cfg, mesh.world_size(), host_available_bytes());
    if (!too_big.empty()) throw Error(too_big);
  }
}

// The program and arguments that start the job's ranks, each running `worker_args` (mpirun or
// srun).
std::vector<std::string> launch_ranks(const Args& args, const LaunchEnvironment& env,
                                      const Mesh& mesh, const std::vector<NodeSlots>& nodes,
                                      const std::vector<std::string>& worker_args) {
  const LaunchHost host = this_host();
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
  return launch_command(mesh.world_size(), worker_args, env, host, hosts);
}

// Runs the training job in child processes (its ranks through mpirun or srun, or one process
// that restarts need to watch), restarting it up to max_restarts times (launcher/restarts.h).
int supervise(const config::RunConfig& cfg, const Args& args, const LaunchEnvironment& env,
              const Mesh& mesh, const std::vector<NodeSlots>& nodes, const std::string& config_path,
              const std::string& run_dir, int max_restarts) {
  std::vector<std::string> base = {"train", config_path};
  for (const std::string& assignment : args.values("--set"))
    base.insert(base.end(), {"--set", assignment});
  base.insert(base.end(), {"--run-dir", run_dir});
  if (args.flag("--allow-cross-node-tp")) base.push_back("--allow-cross-node-tp");
  const bool several = mesh.world_size() > 1;
  const bool resume = resume_wanted(args, run_dir, true);
  if (several) {  // a mistake found here is one message, and no rank is started
    check_machine_fits(cfg, args, env, mesh, nodes);
    // Only where the ranks start here: a head node launching onto others may lack their data.
    if (nodes.empty() && !env.in_slurm_allocation) check_before_start(cfg, run_dir, resume);
  }
  const std::string metrics = run_dir + "/metrics.jsonl";
  auto attempt = [&](int restart, const std::string& cause) {
    std::vector<std::string> worker_args = base;
    std::error_code ec;
    // A restart resumes the run once it has one (a job that failed before starting it begins
    // it again).
    if (resume || (restart > 0 && std::filesystem::exists(run_dir + "/config.textproto", ec)))
      worker_args.push_back("--resume");
    if (restart > 0)
      worker_args.insert(worker_args.end(),
                         {"--restart", std::to_string(restart), "--restart-cause", cause});
    std::vector<std::string> command;
    if (several) {
      command = launch_ranks(args, env, mesh, nodes, worker_args);
    } else {  // this process only watches (a signal goes on to the child, which handles it)
      command = {this_host().executable};
      command.insert(command.end(), worker_args.begin(), worker_args.end());
      command.insert(command.end(), {"--max-restarts", "0"});
    }
    std::string shown;
    for (const std::string& a : command) shown += (shown.empty() ? "" : " ") + a;
    if (several)
      std::cerr << "loom: starting " << mesh.world_size() << " ranks: " << shown << std::endl;
    const std::string before = file_tail(metrics);
    JobEnd end;
    end.status = run_job(command, {.graceful_stop = several,
                                   .received_signal = &end.received_signal,
                                   .filter_mpi_notices = several});
    // Rank 0 appends to metrics.jsonl after every step: a job that ends well without changing
    // it trained nothing (a launcher that started no rank, or other programs than loom).
    if (end.status == 0 && file_tail(metrics) == before)
      throw Error("the launcher (" + command.front() + ") ended with status 0 but no rank " +
                  "trained: " + metrics + " was not written; check that it starts " +
                  std::to_string(mesh.world_size()) + " loom ranks (mpirun -np N loom train ...)");
    // The run's last line names the signal that ended it: the ranks saw SIGUSR1 (a stop after
    // the step) or were ended by mpirun or srun without a word.
    if (end.received_signal && (end.status == kExitStopped || end.status >= 128) && several &&
        std::filesystem::is_directory(run_dir, ec)) {
      RunLog log(std::filesystem::path(run_dir) / "train.log", true, true, "");
      log.line(std::string("loom: ") + signal_name(end.received_signal) +
               (end.status == kExitStopped
                    ? " to loom train (passed on to the ranks as SIGUSR1): the run stopped after "
                      "a step with a checkpoint"
                    : ": the job was stopped at once; its newest complete checkpoint is intact "
                      "(continue with --resume)"));
    }
    return end;
  };
  return run_with_restarts(max_restarts, run_dir, attempt);
}

}  // namespace

int command_train(int argc, char** argv) {
  const Args args = parse_args("train", argv, argc,
                               {{"--set", true},
                                {"--run-dir", false},
                                {"--init-from", false},
                                {"--hostfile", false},
                                {"--hosts", false},
                                {"--max-restarts", false},
                                {"--restart", false},
                                {"--restart-cause", false}},
                               {"--resume", "--oversubscribe", "--allow-cross-node-tp"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.flag("--resume") && !args.has("--run-dir"))
    throw Error("--resume needs --run-dir naming the run to continue");
  const LaunchEnvironment env = detect_launch_environment(process_environment());
  const std::string config_path = train_config_path(args);
  const config::RunConfig cfg = load_config(config_path, args.values("--set"));
  if (args.has("--init-from")) init_checkpoint(args.value("--init-from", ""), cfg);  // before start
  const long max_restarts = args.integer("--max-restarts", cfg.train().max_restarts());
  if (max_restarts < 0 || max_restarts > 1000)
    throw Error("--max-restarts must be between 0 and 1000 (got " + std::to_string(max_restarts) +
                ")");
  const Mesh mesh = parallel_layout(cfg).mesh;
  if (env.is_worker) {
    if (args.has("--hostfile") || args.has("--hosts"))
      throw Error(
          "--hostfile and --hosts are for `loom train` starting the ranks itself; this "
          "process is already a rank (started by mpirun or srun): give the hosts to "
          "mpirun instead");
    return train_worker(cfg, config_path, args, mesh);
  }
  train_fault_injection();  // a bad LOOM_FAULT is found before any rank starts
  const std::vector<NodeSlots> nodes = job_nodes(args, env, mesh);
  const std::string run_dir = args.value("--run-dir", default_run_dir(config_path));
  if (mesh.world_size() == 1 && max_restarts == 0) return train_here(cfg, args, run_dir);
  return supervise(cfg, args, env, mesh, nodes, config_path, run_dir,
                   static_cast<int>(max_restarts));
}

}  // namespace loom
