// Fault-injection scenarios, one per job (parallel_tests --fault-test=NAME under mpirun -np 3).
// Each rank checks what it must see and prints "fault-test NAME: rank R PASS" or "... FAIL: why";
// run_fault_test.sh requires the PASS lines and no FAIL. After a collective timed out, MPI's state
// is not usable for further collectives, so rank 0 ends the job with MPI_Abort once it has
// printed its verdict (the exit status is not the verdict; the printed lines are).
//
// timeout: global rank 1 posts world operation #3 a minute late; rank 0's wait() must throw a
//          CommError naming the group ("world"), the operation ("all_reduce") and the rank it
//          waited for ("global rank 1"), and not rank 2, which had posted it.
// fail:    global rank 1's world operation #3 fails at once (action=fail): its wait() throws
//          CommError; rank 0 times out waiting for global rank 1.
// latency: every world operation of every rank is posted 0.05 s after it was issued
//          (rank=*,group=world,op=*,action=delay: a slow link's latency). Four all-reduces issued
//          back to back all complete about 0.05 s after they were issued — pipelined, not one
//          after the other (which would take 0.2 s) — and another group is not delayed. This
//          scenario ends normally (any number of ranks ≥ 2).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"

namespace loom::test {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Three healthy all-reduces on world, so the faulty one is not the first operation.
bool healthy_prefix(Communicator& world) {
  for (int k = 0; k < 3; ++k) {
    float x = static_cast<float>(world.rank() + 1);
    world.all_reduce(&x, 1);
    const int p = world.size();
    if (x != static_cast<float>(p * (p + 1) / 2)) return false;
  }
  return true;
}

void verdict(const std::string& scenario, int rank, const std::string& failure,
             const std::string& detail) {
  if (failure.empty())
    std::printf("fault-test %s: rank %d PASS (%s)\n", scenario.c_str(), rank, detail.c_str());
  else
    std::printf("fault-test %s: rank %d FAIL: %s (%s)\n", scenario.c_str(), rank, failure.c_str(),
                detail.c_str());
  std::fflush(stdout);
}

// Ranks other than 0 stay alive (their progress threads answer rank 0's diagnosis) until rank 0
// aborts the job; if that never happens the scenario fails.
[[noreturn]] void wait_for_abort(const std::string& scenario, int rank) {
  std::this_thread::sleep_for(std::chrono::seconds(45));
  verdict(scenario, rank, "rank 0 did not end the job", "");
  std::_Exit(1);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run_latency_test() {
  const std::string scenario = "latency";
  constexpr double kLatency = 0.05;
  constexpr int kOps = 4;
  MpiRuntimeOptions options;
  options.timeout_s = 30;
  options.fault = parse_fault_injection("rank=*,group=world,op=*,action=delay,seconds=0.05");
  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init(options);
  const int rank = mpi_world_rank(*mpi);
  std::unique_ptr<Communicator> world = mpi_world(*mpi);
  std::unique_ptr<Communicator> other = mpi_split(*mpi, "other", 0, rank);
  const int p = world->size();
  std::string failure;
  std::ostringstream detail;
  detail.precision(3);

  // Line the ranks up (this all-reduce is delayed too), then time one on the undelayed group.
  float x = 1;
  world->all_reduce(&x, 1);
  auto start = std::chrono::steady_clock::now();
  x = 1;
  other->all_reduce(&x, 1);
  const double undelayed = seconds_since(start);
  detail << "group other: " << undelayed << " s; world:";
  if (x != static_cast<float>(p)) failure = "the all-reduce on group other gave a wrong sum";
  if (failure.empty() && undelayed > 0.8 * kLatency)
    failure = "the all-reduce on group other was delayed too";

  std::vector<float> values(kOps);
  std::vector<WorkPtr> works;
  start = std::chrono::steady_clock::now();
  for (int k = 0; k < kOps; ++k) {
    values[k] = static_cast<float>(rank + k);
    works.push_back(world->all_reduce_async(&values[k], 1, DataType::kFloat32, ReduceOp::kSum));
  }
  if (works[0]->is_completed()) failure = "the first all-reduce completed before its latency";
  std::vector<double> done_after(kOps);
  for (int k = 0; k < kOps; ++k) {
    try {
      works[k]->wait();
    } catch (const CommError& e) {
      if (failure.empty()) failure = std::string("wait() threw: ") + e.what();
    }
    done_after[k] = seconds_since(start);
    detail << ' ' << done_after[k];
    if (values[k] != static_cast<float>(p * (p - 1) / 2 + p * k) && failure.empty())
      failure = "all-reduce " + std::to_string(k) + " gave a wrong sum";
  }
  detail << " s after issue";
  if (failure.empty() && done_after[0] < 0.9 * kLatency)
    failure = "the first all-reduce completed before the injected latency";
  // One after the other they would need kOps × kLatency = 0.2 s.
  if (failure.empty() && done_after[kOps - 1] > 3 * kLatency)
    failure = "the all-reduces were not pipelined: the last completed after " +
              std::to_string(done_after[kOps - 1]) + " s";
  verdict(scenario, rank, failure, detail.str());
  world->barrier();
  return failure.empty() ? 0 : 1;
}

}  // namespace

int run_fault_test(const std::string& scenario) {
  if (scenario == "latency") return run_latency_test();
  MpiRuntimeOptions options;
  options.timeout_s = 2;
  if (scenario == "timeout")
    options.fault = parse_fault_injection("rank=1,group=world,op=3,action=delay,seconds=60");
  else if (scenario == "fail")
    options.fault = parse_fault_injection("rank=1,group=world,op=3,action=fail");
  else {
    std::fprintf(stderr, "unknown --fault-test=%s (timeout, fail or latency)\n", scenario.c_str());
    return 2;
  }
  std::unique_ptr<MpiRuntime> mpi = mpi_runtime_init(options);
  const int rank = mpi_world_rank(*mpi);
  std::unique_ptr<Communicator> world = mpi_world(*mpi);
  if (world->size() < 3) {
    verdict(scenario, rank, "needs at least 3 ranks", "");
    mpi_abort(*mpi, 1);
  }
  if (!healthy_prefix(*world)) {
    verdict(scenario, rank, "the healthy all-reduces before the fault gave wrong sums", "");
    mpi_abort(*mpi, 1);
  }

  float x = 1;
  WorkPtr work = world->all_reduce_async(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  std::string message, failure;
  const auto start = std::chrono::steady_clock::now();
  try {
    work->wait();
    failure = "wait() returned without an error";
  } catch (const CommError& e) {
    message = e.what();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!work->is_completed() && failure.empty()) failure = "is_completed() is false after wait()";

  if (rank == 1 && scenario == "fail") {
    // The injected failure arrives at once, from wait(), on the faulty rank only.
    if (failure.empty() && !contains(message, "injected failure"))
      failure = "the message does not say the failure was injected";
    if (failure.empty() && !contains(message, "all_reduce")) failure = "no operation named";
    if (failure.empty() && waited > 1.0) failure = "the failure was not immediate";
    verdict(scenario, rank, failure, message);
    wait_for_abort(scenario, rank);
  }
  if (rank == 0) {
    // Rank 0 waits for global rank 1 in both scenarios, and only for it.
    for (const char* part : {"timeout", "group world", "all_reduce", "global rank 1"})
      if (failure.empty() && !contains(message, part))
        failure = std::string("the message does not contain \"") + part + "\"";
    if (failure.empty() && contains(message, "waiting for global rank 2"))
      failure = "rank 2 had posted the operation but is named as missing";
    if (failure.empty() && (waited < 1.5 || waited > 15))
      failure = "wait() threw after " + std::to_string(waited) + " s, not about timeout_s = 2 s";
    verdict(scenario, rank, failure, message);
    // Let the other ranks' lines reach mpirun before the abort ends them.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    mpi_abort(*mpi, failure.empty() ? 0 : 1);
  }
  // Rank 2 and above: also time out on rank 1 (rank 1 in "timeout" never gets here: its delayed
  // operation is not even posted before the abort).
  if (rank >= 2) verdict(scenario, rank, failure, message);
  wait_for_abort(scenario, rank);
}

}  // namespace loom::test
