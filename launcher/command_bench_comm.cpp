// `loom bench comm`: collective bandwidth of the MPI communicator, as nccl-tests measures it.
// Run as an MPI job; rank 0 prints one table per operation. Sizes are bytes of float32 data,
// doubling from --min to --max; for reduce-scatter, all-gather and all-to-all the size is the full
// buffer (nccl-tests' convention; all-to-all's rounded down to whole blocks of one per rank). Each
// size: warm-up, then as many timed iterations as fit in about 0.2 s (at most --iters; the count is
// agreed across ranks), then a check of the result against the expected values on fresh data
// ("wrong" and a non-zero exit when it fails).
//   algbw = size / time;  busbw = algbw × 2(n−1)/n (all-reduce) or (n−1)/n (reduce-scatter,
//   all-gather, all-to-all) — the bus bandwidth nccl-tests reports, comparable across rank counts.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "launcher/args.h"
#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    R"(usage: mpirun -np N loom bench comm [--min 1K] [--max 256M] [--iters 50] [--warmup 2]
                                  [--ops all_reduce,reduce_scatter,all_gather,all_to_all]

Times the world communicator's collectives on float32 host data, for sizes (in bytes, K/M/G
suffixes are powers of 1024) doubling from --min to --max, and prints nccl-tests' columns:
size, element count, time per operation (the slowest rank's mean), algorithm bandwidth
(size / time) and bus bandwidth (algbw × 2(n−1)/n for all_reduce, × (n−1)/n for reduce_scatter,
all_gather and all_to_all, whose size is the full buffer: all_to_all's in whole blocks of one per
rank). Iterations per size adapt to about 0.2 s (at
most --iters). Every size's result is checked; a wrong one is printed as "wrong" and the command
exits 1.
)";

constexpr double kTargetSeconds = 0.2;

size_t parse_bytes(const std::string& option, const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::logic_error&) {
    used = 0;
  }
  const std::string suffix = text.substr(used);
  const double scale = suffix.empty() || suffix == "B" ? 1
                       : suffix == "K"                 ? 1024.0
                       : suffix == "M"                 ? 1024.0 * 1024
                       : suffix == "G"                 ? 1024.0 * 1024 * 1024
                                                       : -1;
  if (used == 0 || scale < 0 || value * scale < 4)
    throw Error(option + " " + text +
                ": expected a size of at least 4 bytes, like 4096, 1K, 256M or 1G");
  return static_cast<size_t>(value * scale);
}

std::string format_bytes(size_t bytes) {
  std::ostringstream out;
  if (bytes >= (size_t{1} << 30) && bytes % (size_t{1} << 30) == 0)
    out << (bytes >> 30) << "G";
  else if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0)
    out << (bytes >> 20) << "M";
  else if (bytes >= 1024 && bytes % 1024 == 0)
    out << (bytes >> 10) << "K";
  else
    out << bytes;
  return out.str();
}

enum class Op { kAllReduce, kReduceScatter, kAllGather, kAllToAll };

struct OpInfo {
  Op op;
  const char* name;
};
constexpr OpInfo kOps[] = {{Op::kAllReduce, "all_reduce"},
                           {Op::kReduceScatter, "reduce_scatter"},
                           {Op::kAllGather, "all_gather"},
                           {Op::kAllToAll, "all_to_all"}};

double bus_factor(Op op, int n) {
  if (n <= 1) return 0;
  return op == Op::kAllReduce ? 2.0 * (n - 1) / n : static_cast<double>(n - 1) / n;
}

// The buffers of one size and the operation over them.
struct Case {
  Op op;
  Communicator* comm;
  size_t count;
  ShardRange own;
  // all_reduce: data; reduce_scatter, all_to_all: data → out; all_gather: out
  std::vector<float> data, out;
  size_t block() const { return count / comm->size(); }  // all_to_all: elements per rank

  void run() {
    switch (op) {
      case Op::kAllReduce:
        comm->all_reduce(data.data(), count);
        break;
      case Op::kReduceScatter:
        comm->reduce_scatter(data.data(), out.data(), count);
        break;
      case Op::kAllGather:
        comm->all_gather(data.data(), out.data(), count);
        break;
      case Op::kAllToAll:
        comm->all_to_all_async(data.data(), out.data(), block(), DataType::kFloat32)->wait();
        break;
    }
  }
  // Fresh inputs whose result is known: rank r contributes (r + 1) + (i mod 7) at element i
  // (exact in float32); all-gather shards hold i mod 8191 at their global positions.
  void fill_for_check() {
    const int r = comm->rank();
    if (op == Op::kAllGather) {
      for (size_t j = 0; j < data.size(); ++j) data[j] = static_cast<float>((own.begin + j) % 8191);
      std::fill(out.begin(), out.end(), -1.0f);
    } else {
      for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>(r + 1 + i % 7);
      std::fill(out.begin(), out.end(), -1.0f);
    }
  }
  size_t count_wrong() const {
    const int p = comm->size();
    const float base = static_cast<float>(p * (p + 1) / 2);
    size_t wrong = 0;
    switch (op) {
      case Op::kAllReduce:
        for (size_t i = 0; i < count; ++i)
          wrong += data[i] != base + static_cast<float>(p * (i % 7));
        break;
      case Op::kReduceScatter:
        for (size_t j = 0; j < out.size(); ++j)
          wrong += out[j] != base + static_cast<float>(p * ((own.begin + j) % 7));
        break;
      case Op::kAllGather:
        for (size_t i = 0; i < count; ++i) wrong += out[i] != static_cast<float>(i % 8191);
        break;
      case Op::kAllToAll:  // block j came from rank j: its elements at this rank's block
        for (size_t i = 0; i < count; ++i) {
          const size_t j = i / block(), at = comm->rank() * block() + i % block();
          wrong += out[i] != static_cast<float>(j + 1 + at % 7);
        }
        break;
    }
    return wrong;
  }
};

Case make_case(Op op, Communicator& comm, size_t count) {
  Case c{op, &comm, count, shard_range(count, comm.size(), comm.rank()), {}, {}};
  switch (op) {
    case Op::kAllReduce:
      c.data.assign(count, 0.0f);
      break;
    case Op::kReduceScatter:
      c.data.assign(count, 0.0f), c.out.assign(c.own.size(), 0.0f);
      break;
    case Op::kAllGather:
      c.data.assign(c.own.size(), 0.0f), c.out.assign(count, 0.0f);
      break;
    case Op::kAllToAll:
      c.count = std::max<size_t>(count / comm.size(), 1) * comm.size();
      c.data.assign(c.count, 0.0f), c.out.assign(c.count, 0.0f);
      break;
  }
  return c;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The slowest rank's value: what a collective's time is.
double slowest(Communicator& comm, double seconds) {
  comm.all_reduce(&seconds, 1, ReduceOp::kMax);
  return seconds;
}

}  // namespace

int command_bench_comm(int argc, char** argv) {
  const Args args = parse_args("bench comm", argv, argc,
                               {{"--min", false},
                                {"--max", false},
                                {"--iters", false},
                                {"--warmup", false},
                                {"--ops", false}},
                               {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (!args.positional.empty())
    throw Error("bench comm takes no positional arguments (got \"" + args.positional[0] + "\")");
  const size_t min_bytes = parse_bytes("--min", args.value("--min", "1K"));
  const size_t max_bytes = parse_bytes("--max", args.value("--max", "256M"));
  const long max_iters = args.integer("--iters", 50), warmup = args.integer("--warmup", 2);
  if (min_bytes > max_bytes) throw Error("--min must not exceed --max");
  if (max_iters < 1 || warmup < 0) throw Error("--iters must be ≥ 1 and --warmup ≥ 0");
  std::vector<OpInfo> ops;
  std::istringstream list(args.value("--ops", "all_reduce,reduce_scatter,all_gather,all_to_all"));
  for (std::string name; std::getline(list, name, ',');) {
    auto it = std::find_if(std::begin(kOps), std::end(kOps),
                           [&](const OpInfo& o) { return name == o.name; });
    if (it == std::end(kOps))
      throw Error("--ops: unknown operation \"" + name +
                  "\" (all_reduce, reduce_scatter, all_gather, all_to_all)");
    ops.push_back(*it);
  }

  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init({});
  std::unique_ptr<Communicator> world = mpi_world(*mpi);
  const int p = world->size(), rank = world->rank();
  const unsigned cores = std::thread::hardware_concurrency();
  if (rank == 0) {
    std::printf("# loom bench comm: %d ranks, MPI over host memory, float32, %u cores visible%s\n",
                p, cores,
                static_cast<unsigned>(p) > cores ? " (ranks oversubscribe the cores)" : "");
    std::printf("# time: the slowest rank's mean per operation; busbw as nccl-tests\n");
  }
  bool all_right = true;
  for (const OpInfo& info : ops) {
    if (rank == 0) {
      std::printf("#\n# %s%s (busbw factor %.3f)\n", info.name,
                  info.op == Op::kAllReduce       ? " in place, sum"
                  : info.op == Op::kReduceScatter ? ", sum"
                                                  : "",
                  bus_factor(info.op, p));
      std::printf("# %10s %12s %6s %12s %12s %12s  %s\n", "size(B)", "count", "iters", "time(us)",
                  "algbw(GB/s)", "busbw(GB/s)", "check");
    }
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
      const size_t count = bytes / sizeof(float);
      Case c = make_case(info.op, *world, count);
      // Warm-up; its first run sizes the timed loop.
      world->barrier();
      Clock::time_point start = Clock::now();
      c.run();
      const double first = slowest(*world, seconds_since(start));
      for (long i = 1; i < warmup && first < 0.05; ++i) c.run();
      const long iters = std::clamp(
          static_cast<long>(std::ceil(kTargetSeconds / std::max(first, 1e-7))), 1L, max_iters);
      world->barrier();
      start = Clock::now();
      for (long i = 0; i < iters; ++i) c.run();
      const double seconds = slowest(*world, seconds_since(start) / iters);

      c.fill_for_check();
      c.run();
      double wrong = static_cast<double>(c.count_wrong());
      world->all_reduce(&wrong, 1, ReduceOp::kMax);
      all_right &= wrong == 0;

      const size_t moved = c.count * sizeof(float);  // all_to_all: whole blocks
      const double algbw = static_cast<double>(moved) / seconds / 1e9;
      if (rank == 0) {
        std::printf("  %10s %12zu %6ld %12.1f %12.3f %12.3f  %s\n", format_bytes(moved).c_str(),
                    c.count, iters, seconds * 1e6, algbw, algbw * bus_factor(info.op, p),
                    wrong == 0 ? "ok" : "wrong");
        std::fflush(stdout);
      }
    }
  }
  if (rank == 0 && !all_right) std::printf("# some results were wrong\n");
  return all_right ? 0 : 1;
}

}  // namespace loom
