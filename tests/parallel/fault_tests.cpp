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
#include <chrono>
#include <cstdio>
#include <cstdlib>
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

}  // namespace

int run_fault_test(const std::string& scenario) {
  MpiRuntimeOptions options;
  options.timeout_s = 2;
  if (scenario == "timeout")
    options.fault = parse_fault_injection("rank=1,group=world,op=3,action=delay,seconds=60");
  else if (scenario == "fail")
    options.fault = parse_fault_injection("rank=1,group=world,op=3,action=fail");
  else {
    std::fprintf(stderr, "unknown --fault-test=%s (timeout or fail)\n", scenario.c_str());
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
