// `loom bench ring`: ring attention (parallel/ring_attention.h) and Ulysses
// (parallel/ulysses_attention.h) over the world as one sp group, against whole-sequence attention
// on one rank. Run as an MPI job, one thread per rank. Every
// rank first times the whole sequence's causal attention (forward + backward) alone — the
// single-rank baseline, measured on every rank at once so each has the same share of the
// machine — then its part of ring attention under each layout. Rank 0 prints per rank the
// block compute time, the exposed ring wait and the whole ring time (medians over --iters), and
// the ratios: balance (max ÷ min compute over ranks), efficiency (baseline ÷ sp over the slowest
// rank's ring time: 1 is ideal), exposed wait (the largest share of a rank's ring time spent
// blocked on transfers) and the bytes each rank sent per forward + backward.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/threads.h"
#include "launcher/args.h"
#include "launcher/commands.h"
#include "parallel/device_communicator.h"
#include "parallel/mpi_runtime.h"
#include "parallel/ring_attention.h"
#include "parallel/ulysses_attention.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    R"(usage: mpirun -np SP loom bench ring [--seq-len 4096] [--batch 1] [--d-model 128]
                                 [--heads 4] [--iters 5] [--layouts zigzag,contiguous,ulysses]
                                 [--json]

Times causal attention over sequences of --seq-len tokens (forward + backward; B = --batch,
C = --d-model, H = --heads) cut over the job's SP ranks, one thread each:
  whole   every rank computes the whole sequence's attention alone: the single-rank time;
  ring    each rank's part through ring attention, for each --layouts entry (zigzag: chunks r
          and 2·SP−1−r; contiguous: chunk r), or through Ulysses (ulysses: zigzag rows, two
          all-to-alls to a head split around whole-sequence attention; --heads must divide by SP).
Per layout it prints, per rank, the kernels' time (compute), the time blocked on transfers
(wait), the whole attention time (medians over --iters) and the bytes it sent, then
  balance     max ÷ min compute over the ranks (1: every rank does the same work),
  efficiency  (whole ÷ SP) ÷ the slowest rank's ring time (1: ideal speed-up),
  exposed     the largest share of any rank's ring time spent blocked on transfers.
--json prints one JSON object instead (for tests/bench/ring_attention.py).
)";

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<float> random_vector(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Shape {
  int B, T, C, H;
};

// Median seconds of the whole sequence's attention forward + backward on this rank.
double time_whole(const Shape& s, int iters) {
  const auto qkv = random_vector(static_cast<size_t>(s.B) * s.T * 3 * s.C, 1);
  const auto dout = random_vector(static_cast<size_t>(s.B) * s.T * s.C, 2);
  std::vector<float> out(dout.size()), lse(static_cast<size_t>(s.B) * s.H * s.T), dqkv(qkv.size());
  std::vector<float> scratch(kernels::cpu::attention_scratch_floats(s.T, 1));
  std::vector<double> times;
  for (int i = 0; i <= iters; ++i) {  // the first is warm-up
    const auto start = Clock::now();
    kernels::cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.H, s.H,
                                    scratch.data());
    kernels::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(),
                                     s.B, s.T, s.C, s.H, s.H, scratch.data());
    if (i > 0) times.push_back(seconds_since(start));
  }
  return median(times);
}

struct RingTimes {
  double compute = 0, wait = 0, total = 0;  // medians, seconds
  double bytes = 0;                         // sent by this rank per forward + backward
};

// One method's forward + backward over the group, timed: `run` does one (after `prepare`, which is
// not timed) and returns its {compute, wait} seconds. The first run warms up; medians of the rest,
// and the bytes `sent` counted during the last.
template <class Prepare, class Run>
RingTimes time_runs(Communicator& sp, std::atomic<uint64_t>& sent, int iters, Prepare prepare,
                    Run run) {
  std::vector<double> compute, wait, total;
  double bytes = 0;
  for (int i = 0; i <= iters; ++i) {
    prepare();
    sp.barrier();
    sent = 0;
    const auto start = Clock::now();
    const auto [computed, waited] = run();
    if (i == 0) continue;  // warm-up
    total.push_back(seconds_since(start));
    compute.push_back(computed);
    wait.push_back(waited);
    bytes = static_cast<double>(sent.load());
  }
  return {median(compute), median(wait), median(total), bytes};
}

// Ulysses' forward + backward on zigzag rows; compute is what is not waiting on the all-to-alls.
// `sent` counts what `sp` sends.
RingTimes time_ulysses(Communicator& sp, std::atomic<uint64_t>& sent, const Shape& s, int iters) {
  const auto be = kernels::cpu::make_cpu_backend();
  const int Tl = s.T / sp.size();
  const auto rows = random_vector(static_cast<size_t>(s.B) * Tl * 3 * s.C, 10 + sp.rank());
  const auto dout = random_vector(static_cast<size_t>(s.B) * Tl * s.C, 20 + sp.rank());
  std::vector<float> qkv(rows.size()), out(dout.size()), lse(static_cast<size_t>(s.B) * s.H * Tl),
      dqkv(rows.size());
  std::vector<float> work(ulysses_workspace_activations(s.B, Tl, s.C, s.C));
  std::vector<char> scratch(ulysses_scratch_bytes(*be, s.B, Tl, s.C, s.H, sp.size()));
  const UlyssesWorkspace ws =
      ulysses_workspace_at(*be, work.data(), scratch.data(), s.B, Tl, s.C, s.C);
  return time_runs(
      sp, sent, iters, [&] { qkv = rows; },  // forward leaves the head group's rows in qkv
      [&] {
        UlyssesAttention u{&sp, SequenceLayout::kZigzag};
        const auto start = Clock::now();
        ulysses_attention_forward(u, *be, ws, out.data(), lse.data(), qkv.data(), s.B, Tl, s.C, s.H,
                                  s.H);
        ulysses_attention_backward(u, *be, ws, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                   lse.data(), s.B, Tl, s.C, s.H, s.H);
        return std::pair{seconds_since(start) - u.wait_seconds, u.wait_seconds};
      });
}

RingTimes time_ring(Communicator& sp, std::atomic<uint64_t>& sent, SequenceLayout layout,
                    const Shape& s, int iters) {
  const auto be = kernels::cpu::make_cpu_backend();
  const int Tl = s.T / sp.size();
  const auto qkv = random_vector(static_cast<size_t>(s.B) * Tl * 3 * s.C, 10 + sp.rank());
  const auto dout = random_vector(static_cast<size_t>(s.B) * Tl * s.C, 20 + sp.rank());
  std::vector<float> out(dout.size()), lse(static_cast<size_t>(s.B) * s.H * Tl), dqkv(qkv.size());
  std::vector<float> work(ring_workspace_activations(s.B, Tl, s.C, s.C));
  std::vector<float> block_lse(ring_workspace_lse_floats(s.B, Tl, s.H));
  std::vector<char> scratch(be->attention_block_scratch_bytes(s.B, s.H, Tl, Tl));
  const RingWorkspace ws =
      ring_workspace_at(*be, work.data(), block_lse.data(), scratch.data(), s.B, Tl, s.C, s.C);
  return time_runs(
      sp, sent, iters, [] {},
      [&] {
        RingAttention ring(&sp, layout);
        ring_attention_forward(ring, *be, ws, out.data(), lse.data(), qkv.data(), s.B, Tl, s.C, s.H,
                               s.H);
        ring_attention_backward(ring, *be, ws, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                lse.data(), s.B, Tl, s.C, s.H, s.H);
        return std::pair{ring.compute_seconds, ring.wait_seconds};
      });
}

// Every rank's value, on every rank.
std::vector<double> all_ranks(Communicator& comm, double value) {
  std::vector<double> v(comm.size(), 0.0);
  v[comm.rank()] = value;
  comm.all_reduce(v.data(), v.size(), ReduceOp::kSum);
  return v;
}

}  // namespace

int command_bench_ring(int argc, char** argv) {
  const Args args = parse_args("bench ring", argv, argc,
                               {{"--seq-len", false},
                                {"--batch", false},
                                {"--d-model", false},
                                {"--heads", false},
                                {"--iters", false},
                                {"--layouts", false}},
                               {"--json"});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (!args.positional.empty())
    throw Error("bench ring takes no positional arguments (got \"" + args.positional[0] + "\")");
  const Shape s{static_cast<int>(args.integer("--batch", 1)),
                static_cast<int>(args.integer("--seq-len", 4096)),
                static_cast<int>(args.integer("--d-model", 128)),
                static_cast<int>(args.integer("--heads", 4))};
  const int iters = static_cast<int>(args.integer("--iters", 5));
  if (s.B < 1 || s.T < 1 || s.C < 1 || s.H < 1 || s.C % s.H != 0 || iters < 1)
    throw Error(
        "bench ring: --batch, --seq-len, --d-model, --heads and --iters must be positive "
        "and --heads must divide --d-model");
  std::vector<std::pair<std::string, SequenceLayout>> layouts;
  const std::string list = args.value("--layouts", "zigzag,contiguous,ulysses");
  for (size_t at = 0; at <= list.size();) {
    const size_t comma = std::min(list.find(',', at), list.size());
    const std::string name = list.substr(at, comma - at);
    if (name == "zigzag")
      layouts.emplace_back(name, SequenceLayout::kZigzag);
    else if (name == "contiguous")
      layouts.emplace_back(name, SequenceLayout::kContiguous);
    else if (name == "ulysses")  // zigzag rows; the layout does not change Ulysses' work
      layouts.emplace_back(name, SequenceLayout::kZigzag);
    else
      throw Error("--layouts: unknown layout \"" + name + "\" (zigzag, contiguous, ulysses)");
    at = comma + 1;
  }

  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init({});
  std::unique_ptr<Communicator> world = mpi_world(*mpi);
  // The attention's group: the world again, counting the bytes this rank sends.
  auto sent = std::make_shared<std::atomic<uint64_t>>(0);
  std::unique_ptr<Communicator> sp_group =
      make_device_communicator(mpi_world(*mpi, "sp"), kernels::cpu::make_cpu_backend(), sent);
  const int sp = world->size();
  if (sp < 2)
    throw Error(
        "bench ring runs ring attention over the job's ranks: start it with mpirun -np "
        "SP, SP ≥ 2");
  if (s.T % (2 * sp) != 0)
    throw Error("bench ring: --seq-len (" + std::to_string(s.T) + ") must be divisible by 2 × " +
                std::to_string(sp) + " ranks");
  kernels::cpu::init_threads(1);
  const bool json = args.flag("--json"), printer = world->rank() == 0;
  world->barrier();
  const std::vector<double> whole = all_ranks(*world, time_whole(s, iters));
  const double baseline = median(whole);
  if (printer && json)
    std::printf("{\"sp\":%d,\"B\":%d,\"T\":%d,\"C\":%d,\"H\":%d,\"whole_ms\":%.4f,\"layouts\":{",
                sp, s.B, s.T, s.C, s.H, baseline * 1e3);
  if (printer && !json)
    std::printf(
        "# loom bench ring: sp %d ranks × 1 thread, B %d, T %d, C %d, H %d\n"
        "whole sequence on one rank: %.2f ms (forward + backward); ideal at sp %d: "
        "%.2f ms\n",
        sp, s.B, s.T, s.C, s.H, baseline * 1e3, sp, baseline * 1e3 / sp);
  for (size_t l = 0; l < layouts.size(); ++l) {
    if (layouts[l].first == "ulysses" && s.H % sp != 0)
      throw Error("bench ring: ulysses needs --heads (" + std::to_string(s.H) +
                  ") divisible by the " + std::to_string(sp) + " ranks");
    const RingTimes t = layouts[l].first == "ulysses"
                            ? time_ulysses(*sp_group, *sent, s, iters)
                            : time_ring(*sp_group, *sent, layouts[l].second, s, iters);
    const std::vector<double> compute = all_ranks(*world, t.compute);
    const std::vector<double> wait = all_ranks(*world, t.wait);
    const std::vector<double> total = all_ranks(*world, t.total);
    const std::vector<double> bytes = all_ranks(*world, t.bytes);
    if (!printer) continue;
    const size_t slowest = std::max_element(total.begin(), total.end()) - total.begin();
    const double balance = *std::max_element(compute.begin(), compute.end()) /
                           *std::min_element(compute.begin(), compute.end());
    const double efficiency = baseline / sp / total[slowest];
    double exposed = 0;  // the largest share of any rank's ring time spent blocked
    for (int r = 0; r < sp; ++r) exposed = std::max(exposed, wait[r] / total[r]);
    if (json) {
      std::printf("%s\"%s\":{\"balance\":%.4f,\"efficiency\":%.4f,\"exposed\":%.4f,\"ranks\":[",
                  l ? "," : "", layouts[l].first.c_str(), balance, efficiency, exposed);
      for (int r = 0; r < sp; ++r)
        std::printf("%s{\"compute_ms\":%.4f,\"wait_ms\":%.4f,\"ring_ms\":%.4f,\"sent_mib\":%.4f}",
                    r ? "," : "", compute[r] * 1e3, wait[r] * 1e3, total[r] * 1e3,
                    bytes[r] / (1 << 20));
      std::printf("]}");
      continue;
    }
    std::printf("\n%s\n  rank   compute ms   wait ms   total ms   sent MiB\n",
                layouts[l].first.c_str());
    for (int r = 0; r < sp; ++r)
      std::printf("  %4d   %10.2f   %7.2f   %8.2f   %8.2f\n", r, compute[r] * 1e3, wait[r] * 1e3,
                  total[r] * 1e3, bytes[r] / (1 << 20));
    std::printf(
        "  balance %.2f (max ÷ min compute), efficiency %.2f (ideal ÷ slowest ring), "
        "exposed wait %.1f%%\n",
        balance, efficiency, 100 * exposed);
  }
  if (printer && json) std::printf("}}\n");
  return 0;
}

}  // namespace loom
