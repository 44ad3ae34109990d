// `loom bench calibrate`: measures this machine for the step-time model (core/time_model.h) and
// writes its cluster file (configs/loom.proto, ClusterConfig).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/backend.h"
#include "core/cluster.h"
#include "core/config.h"
#include "core/file_io.h"
#include "core/memory_model.h"
#include "core/parallel_layout.h"
#include "core/peak_flops.h"
#include "core/time_model.h"
#include "kernels/cpu/threads.h"
#include "kernels/device_array.h"
#include "launcher/args.h"
#include "launcher/bench_step.h"
#include "launcher/commands.h"
#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    R"(usage: mpirun -np N loom bench calibrate CONFIG --out FILE [--set k=v]...

Measures what `loom plan --cluster` needs to predict step times on this machine, with N ranks
(N ≥ 2) of runtime.threads threads each, every rank measuring at once as in a job, and writes
a cluster file (configs/loom.proto, ClusterConfig):
  - the peak: the fp32 2048³ GEMM rate of one rank through the CPU kernels (the slowest rank's;
    bf16 the same: the CPU computes bf16 activations in fp32),
  - memory bandwidth: one rank's rate of the kernels' vector add over 3 × 128 MiB (the slowest),
  - the link: the all-reduce over the N ranks at 64 KiB … 16 MiB fitted to a base latency plus
    the ring's bytes over a bandwidth (shared memory here),
  - gemm_efficiency: what CONFIG's training step on one rank (every rank timing its own at once,
    the slowest) reaches of that peak, solved for with the model (memory_efficiency 1: the
    bandwidth measured is the kernels' own).
devices_per_node is N and memory_gib each one's share of the memory available now. One machine
has no network: inter_node repeats the shared-memory link (edit it for a cluster of them).

  --out FILE   the cluster file to write (rank 0 writes it)
  --set k=v    override a field of CONFIG (repeatable)
)";

// The slowest rank's value of a time (or the smallest of a rate, given negated).
double slowest(Communicator& world, double value) {
  world.all_reduce(&value, 1, ReduceOp::kMax);
  return value;
}

// GB/s of the backend's vector add (y += x: two reads and a write per float), best of three.
double add_bandwidth_gbs() {
  const std::shared_ptr<const kernels::KernelBackend> be = make_cpu_backend();
  const size_t n = size_t{32} << 20;  // 128 MiB of floats per array
  kernels::DeviceArray<float> x(be, n), y(be, n);
  be->zero_bytes(x.data(), n * sizeof(float));
  be->zero_bytes(y.data(), n * sizeof(float));
  double best = 1e30;
  for (int i = 0; i < 4; ++i) {
    const auto start = Clock::now();
    be->vector_add(y.data(), x.data(), n);
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (i > 0) best = std::min(best, s);  // the first touches the pages
  }
  return 3.0 * n * sizeof(float) / best / 1e9;
}

// The all-reduce's time over sizes, fitted to t = a + b · bytes (least squares): a in seconds,
// b in seconds per byte.
std::pair<double, double> fit_all_reduce(Communicator& world) {
  std::vector<double> xs, ys;
  for (size_t bytes = size_t{64} << 10; bytes <= size_t{16} << 20; bytes *= 2) {
    std::vector<float> data(bytes / sizeof(float), 1.0f);
    world.barrier();
    int iters = 0;
    const auto start = Clock::now();
    double elapsed = 0;
    while (elapsed < 0.1 || iters < 3) {
      world.all_reduce(data.data(), data.size(), ReduceOp::kSum);
      ++iters;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      world.all_reduce(&elapsed, 1, ReduceOp::kMax);  // every rank stops together
    }
    xs.push_back(static_cast<double>(bytes));
    ys.push_back(elapsed / iters);
  }
  const double n = static_cast<double>(xs.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    sx += xs[i], sy += ys[i], sxx += xs[i] * xs[i], sxy += xs[i] * ys[i];
  }
  const double b = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  return {std::max(0.0, (sy - b * sx) / n), b};
}

// The gemm_efficiency at which the model predicts `measured` seconds for `cfg` on one device of
// `cluster` (bisection; the prediction falls as the efficiency rises), clamped to (0, 1].
double solve_gemm_efficiency(const config::RunConfig& cfg, ClusterConfig cluster, double measured) {
  auto predicted = [&](double e) {
    cluster.mutable_device()->set_gemm_efficiency(e);
    return predict_step(cfg, parallel_layout(cfg), cluster, 1).step;
  };
  double lo = 0.005, hi = 1.0;
  if (predicted(hi) >= measured) return hi;
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi);
    (predicted(mid) > measured ? lo : hi) = mid;
  }
  return hi;
}

std::string cluster_text(const ClusterConfig& c, const std::string& config_path, int ranks,
                         int threads, double measured_ms) {
  char text[4096];
  std::snprintf(
      text, sizeof(text),
      "# This machine, measured by `mpirun -np %d loom bench calibrate %s` (%d thread%s per "
      "rank).\n"
      "# For loom plan --cluster (configs/loom.proto, ClusterConfig; docs/launching.md).\n"
      "name: \"%s\"\nsource: \"%s\"\n"
      "device {\n  name: \"%s\"\n"
      "  fp32_tflops: %.6g  # 2048^3 fp32 GEMM through the CPU kernels, one rank\n"
      "  bf16_tflops: %.6g  # the same: the CPU computes bf16 activations in fp32\n"
      "  memory_gib: %.4g  # this rank's share of the memory available when measured\n"
      "  memory_gbs: %.6g  # the kernels' vector add, one rank\n"
      "  gemm_efficiency: %.4g  # the config's step, %.1f ms on one rank, solved for\n"
      "  memory_efficiency: 1  # the bandwidth above is the kernels' own\n}\n"
      "devices_per_node: %d\n"
      "intra_node {\n  bandwidth_gbs: %.6g  # all-reduce over the %d ranks, fitted\n"
      "  latency_us: 0  # the fit's intercept is all base latency (below)\n}\n"
      "inter_node {\n  bandwidth_gbs: %.6g  # one machine has no network: the link above\n"
      "  latency_us: 0\n}\n"
      "collective_latency_us: %.6g  # the all-reduce fit's intercept\n",
      ranks, config_path.c_str(), threads, threads == 1 ? "" : "s", c.name().c_str(),
      c.source().c_str(), c.device().name().c_str(), c.device().fp32_tflops(),
      c.device().bf16_tflops(), c.device().memory_gib(), c.device().memory_gbs(),
      c.device().gemm_efficiency(), measured_ms, c.devices_per_node(),
      c.intra_node().bandwidth_gbs(), ranks, c.inter_node().bandwidth_gbs(),
      c.collective_latency_us());
  return text;
}

}  // namespace

int command_bench_calibrate(int argc, char** argv) {
  const Args args =
      parse_args("bench calibrate", argv, argc, {{"--set", true}, {"--out", false}}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1 || !args.has("--out"))
    throw Error(
        "bench calibrate needs one CONFIG and --out FILE (see loom bench calibrate --help)");
  config::RunConfig cfg = load_config(args.positional[0], args.values("--set"));
  // The step is timed on one rank, one micro-batch (as loom bench step runs it).
  cfg.mutable_parallel()->Clear();
  cfg.mutable_train()->set_global_batch(cfg.train().micro_batch());
  validate_config(cfg);
  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init({});
  std::unique_ptr<Communicator> world = mpi_world(*mpi);
  const int ranks = world->size();
  if (ranks < 2)
    throw Error(
        "bench calibrate measures the link between ranks: run it under mpirun with "
        "at least 2 ranks, as many as a job here would run");
  const int threads = kernels::cpu::init_threads(cfg.runtime().threads());
  const double gflops = -slowest(*world, -gemm_gflops(2048));
  const double bandwidth = -slowest(*world, -add_bandwidth_gbs());
  const auto [base, per_byte] = fit_all_reduce(*world);
  const double share = 2.0 * (ranks - 1) / ranks;  // of the buffer through each rank's link
  const double measured = slowest(*world, time_train_steps(cfg, 5, 2).seconds);

  ClusterConfig c;
  c.set_name("this machine (" + cpu_model_name() + ")");
  c.set_source("measured here by loom bench calibrate");
  ClusterConfig::Device& d = *c.mutable_device();
  d.set_name(cpu_model_name() + ", " + std::to_string(threads) + " thread" +
             (threads == 1 ? "" : "s"));
  d.set_fp32_tflops(gflops / 1000.0);
  d.set_bf16_tflops(gflops / 1000.0);
  d.set_memory_gib(std::max(0.001, host_available_bytes() / ranks / (1024.0 * 1024.0 * 1024.0)));
  d.set_memory_gbs(bandwidth);
  d.set_gemm_efficiency(1.0);
  d.set_memory_efficiency(1.0);
  c.set_devices_per_node(ranks);
  c.mutable_intra_node()->set_bandwidth_gbs(share / per_byte / 1e9);
  c.mutable_intra_node()->set_latency_us(0);
  *c.mutable_inter_node() = c.intra_node();
  c.set_collective_latency_us(base * 1e6);
  d.set_gemm_efficiency(solve_gemm_efficiency(cfg, c, measured));
  if (world->rank() == 0) {
    const std::string text = cluster_text(c, args.positional[0], ranks, threads, measured * 1e3);
    parse_cluster(text, "the calibrated cluster");  // what is written loads
    write_file(args.value("--out", ""), text.data(), text.size());
    std::printf(
        "peak %.1f GFLOP/s per rank, memory %.1f GB/s, all-reduce %.1f µs + bytes at %.2f GB/s, "
        "gemm_efficiency %.3f (step %.1f ms); wrote %s\n",
        gflops, bandwidth, base * 1e6, c.intra_node().bandwidth_gbs(), c.device().gemm_efficiency(),
        measured * 1e3, args.value("--out", "").c_str());
  }
  return 0;
}

}  // namespace loom
