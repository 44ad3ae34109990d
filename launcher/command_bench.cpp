#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/rng.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/parallel_layout.h"
#include "core/peak_flops.h"
#include "core/trainer.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/bench_step.h"
#include "launcher/commands.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    R"(usage: loom bench step CONFIG [--set k=v]... [--steps N] [--warmup N] [--json]
       loom bench sgemm [--size N] [--threads N]
       mpirun -np N loom bench comm [--min 1K] [--max 256M] [--ops ...]   (see bench comm --help)
       mpirun -np SP loom bench ring [--seq-len 4096] ...                (see bench ring --help)
       mpirun -np N loom bench calibrate CONFIG --out FILE        (see bench calibrate --help)

step:  times whole training steps (forward, backward, clipping, AdamW) of CONFIG's model on one
       micro-batch of random tokens, after warm-up; prints the median step time, tokens/s, the
       model FLOP rate and MFU and HFU as loom train reports them (model FLOPs: 3 × forward
       matmuls and attention over all keys; hardware FLOPs add what train.recompute runs again;
       the peak is runtime.peak_tflops or the cached sgemm rate). No data files are needed.
sgemm: the OpenBLAS sgemm rate on N×N×N (default 2048), best of 5; at 2048 it is also cached
       as loom train's peak for MFU at that thread count (core/peak_flops.h says where).
comm:  all-reduce / reduce-scatter / all-gather time, algorithm and bus bandwidth over sizes, as
       nccl-tests reports them, for the MPI backend; run under mpirun.
calibrate: measures this machine for loom plan --cluster and writes its cluster file.
ring:  ring attention over the job's ranks against one rank's whole-sequence attention: per-rank
       compute and exposed wait, balance (zigzag vs contiguous) and efficiency; run under mpirun.

  --steps N   timed steps (default 10)        --warmup N   untimed steps first (default 2)
  --json      print one JSON object instead of the table
)";

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int bench_sgemm(const Args& args) {
  const long requested = args.integer("--threads", 0);
  if (requested < 0 || requested > 4L * std::max(1u, std::thread::hardware_concurrency()))
    throw Error("--threads must be between 0 (one per core) and 4× this machine's cores (got " +
                std::to_string(requested) + ")");
  const long size = args.integer("--size", 2048);
  // Three size² fp32 matrices: 16384 is 3 GiB.
  if (size <= 0 || size > 16384)
    throw Error("--size must be between 1 and 16384 (got " + std::to_string(size) + ")");
  const int threads = kernels::cpu::init_threads(static_cast<int>(requested));
  const int n = static_cast<int>(size);
  if (n != 2048) {
    std::printf("sgemm %d^3, %d threads: %.1f GFLOP/s\n", n, threads, gemm_gflops(n));
    return 0;
  }
  // The size MFU's peak is measured at: measured again and cached (core/peak_flops.h).
  const double tflops = cpu_peak_tflops(threads, true);
  const std::filesystem::path cache = peak_cache_path();
  std::printf("sgemm %d^3, %d threads: %.1f GFLOP/s; loom train's peak for MFU at %d threads%s\n",
              n, threads, tflops * 1000.0, threads,
              cache.empty() ? " (not cached: neither XDG_CACHE_HOME nor HOME is set)"
                            : (", cached in " + cache.string()).c_str());
  return 0;
}

}  // namespace

StepTiming time_train_steps(const config::RunConfig& cfg, int steps, int warmup) {
  StepTiming out;
  out.threads = kernels::cpu::init_threads(cfg.runtime().threads());
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  // runtime.device and runtime.precision as loom train runs them.
  Model model = model_create(cfg.model(), make_backend(cfg.runtime()));
  model_init(model, cfg.train().seed());
  Pipeline pipe = pipeline_single(1);
  model_plan(model, B, T, pipe.slots, pipe.boundaries, false, parallel_layout(cfg).recompute);
  Optimizer optimizer = optimizer_create(model);
  Rng rng{cfg.train().seed()};
  std::vector<int> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  for (int& x : inputs) x = static_cast<int>(rng.below(model.spec.V));
  for (int& x : targets) x = static_cast<int>(rng.below(model.spec.V));
  std::vector<double> times;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto start = Clock::now();
    out.result =
        train_step(model, optimizer, pipe, cfg, cfg.optim().lr(), inputs.data(), targets.data());
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (i >= warmup) times.push_back(s);
  }
  out.seconds = median(times);
  out.params = model.layout.num_params;
  out.positions = model.spec.unrolled.size();
  out.arena_mib = pipeline_activation_memory(pipe, model).peak / (1024.0 * 1024.0);
  return out;
}

namespace {

int bench_step(const Args& args) {
  if (args.positional.size() != 2)
    throw Error("bench step needs one CONFIG (see loom bench --help)");
  const config::RunConfig cfg = load_config(args.positional[1], args.values("--set"));
  const auto& p = cfg.parallel();
  if (p.dp() * p.tp() * p.pp() * p.sp() != 1)
    throw Error("bench step times one process; this config asks for " +
                std::to_string(p.dp() * p.tp() * p.pp() * p.sp()) +
                " ranks (parallel.*): time parallel layouts with loom train (ms_per_step and "
                "comm_wait_ms in metrics.jsonl) or tests/bench/dp_overlap.py and tp_ladder.py");
  const int steps = static_cast<int>(args.integer("--steps", 10));
  const int warmup = static_cast<int>(args.integer("--warmup", 2));
  if (steps < 1 || warmup < 0) throw Error("--steps must be ≥ 1 and --warmup ≥ 0");
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  const StepTiming timing = time_train_steps(cfg, steps, warmup);
  const StepResult& result = timing.result;
  const int threads = timing.threads;
  const double step_s = timing.seconds;
  const double tokens = static_cast<double>(B) * T;
  // MFU as loom train reports it: model FLOPs (and with recomputation, hardware FLOPs) over the
  // peak (runtime.peak_tflops, or the cached GEMM measurement: core/peak_flops.h).
  const double flops = result.model_flops, hardware_flops = result.hardware_flops;
  const double gflops = flops / step_s / 1e9;
  const double peak = peak_tflops(cfg.runtime()) * 1000.0;
  // The activation arena (what loom plan prints) and the process's peak resident memory.
  const double arena_mib = timing.arena_mib;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double rss_mib = usage.ru_maxrss / 1024.0;  // kilobytes on Linux
  const std::string recompute = config::TrainConfig::Recompute_Name(cfg.train().recompute());
  if (args.flag("--json")) {
    std::printf(
        "{\"model\":%s,\"batch\":%d,\"seq_len\":%d,\"threads\":%d,\"params\":%zu,"
        "\"ms_per_step\":%.3f,\"tokens_per_s\":%.1f,\"flops_per_step\":%.6g,"
        "\"gflops\":%.2f,\"sgemm_peak_gflops\":%.2f,\"mfu\":%.5f,"
        "\"hardware_flops_per_step\":%.6g,\"hfu\":%.5f,\"recompute\":\"%s\","
        "\"activation_mib\":%.2f,\"max_rss_mib\":%.1f}\n",
        model_config_json(cfg.model()).c_str(), B, T, threads, timing.params, step_s * 1e3,
        tokens / step_s, flops, gflops, peak, gflops / peak, hardware_flops,
        hardware_flops / step_s / 1e9 / peak, recompute.c_str(), arena_mib, rss_mib);
  } else {
    std::printf(
        "model: %zu parameters, %zu unrolled layers, micro-batch %d × %d tokens, %d threads\n",
        timing.params, timing.positions, B, T, threads);
    std::printf("activations: %.2f MiB (train.recompute %s); peak resident memory %.1f MiB\n",
                arena_mib, recompute.c_str(), rss_mib);
    std::printf("step (median of %d): %.1f ms, %.0f tokens/s\n", steps, step_s * 1e3, tokens / step_s);
    std::printf(
        "compute: %.1f GFLOP/s of model FLOPs = MFU %.1f%% of the peak %.1f GFLOP/s "
        "(model FLOPs/step %.3g; with recomputation %.3g, HFU %.1f%%)\n",
        gflops, 100.0 * gflops / peak, peak, flops, hardware_flops,
        100.0 * hardware_flops / step_s / 1e9 / peak);
  }
  return 0;
}

}  // namespace

int command_bench(int argc, char** argv) {
  // `bench comm` runs as an MPI job and has options of its own.
  if (argc > 0 && std::string(argv[0]) == "comm") return command_bench_comm(argc - 1, argv + 1);
  if (argc > 0 && std::string(argv[0]) == "ring") return command_bench_ring(argc - 1, argv + 1);
  if (argc > 0 && std::string(argv[0]) == "calibrate")
    return command_bench_calibrate(argc - 1, argv + 1);
  const Args args = parse_args("bench", argv, argc,
                               {{"--set", true}, {"--steps", false}, {"--warmup", false},
                                {"--size", false}, {"--threads", false}},
                               {"--json"});
  if (args.flag("--help") || args.positional.empty()) {
    std::cout << kHelp;
    return args.flag("--help") ? 0 : 2;
  }
  if (args.positional[0] == "step") return bench_step(args);
  if (args.positional[0] == "sgemm") return bench_sgemm(args);
  throw Error("unknown benchmark \"" + args.positional[0] +
              "\" (step, sgemm, comm, ring or calibrate)");
}

}  // namespace loom
