// Entry point of the multi-rank tests (run under mpirun; see CMakeLists.txt). One MPI runtime per
// process; only rank 0 prints gtest's report, other ranks print their failures; every rank exits
// non-zero when any rank failed.
//
// `--fault-test=timeout|fail|latency` runs a fault-injection scenario instead of the tests (see
// fault_tests.cpp): a timed-out collective leaves MPI unusable, so timeout and fail end the job
// with MPI_Abort; every scenario is judged by its output (run_fault_test.sh).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/groups.h"
#include "parallel/mpi_runtime.h"
#include "tests/parallel/parallel_test_env.h"

namespace loom::test {

int run_fault_test(const std::string& scenario);  // fault_tests.cpp

ParallelTestContext& context() {
  static ParallelTestContext instance;
  return instance;
}

std::vector<Communicator*> communicators() {
  ProcessGroups& g = *context().groups;
  return {g.world.get(), g.tp.get(), g.dp.get(), g.pp.get()};
}

namespace {

// On ranks other than 0: print each failed assertion, prefixed with the rank, to stderr.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

int run_tests(MpiRuntime& mpi, FlightRecorder& flight) {
  const int rank = mpi_world_rank(mpi), size = mpi_world_size(mpi);
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int dp = size % 2 == 0 ? 2 : 1;
  ProcessGroups groups = process_groups_create(&mpi, Mesh{.dp = dp, .tp = size / dp});
  std::unique_ptr<Communicator> delayed = mpi_split(mpi, "delayed", 0, rank);
  context() = {.mpi = &mpi,
               .groups = &groups,
               .world = groups.world.get(),
               .delayed = delayed.get(),
               .flight = &flight};

  const int result = RUN_ALL_TESTS();
  // Every rank learns whether any rank failed, so mpirun's status and each rank's agree.
  double failed = result != 0 || ::testing::UnitTest::GetInstance()->failed_test_count() > 0;
  try {
    groups.world->all_reduce(&failed, 1, ReduceOp::kMax);
  } catch (const CommError& e) {
    std::fprintf(stderr, "[rank %d] could not collect the verdict: %s\n", rank, e.what());
    failed = 1;
  }
  if (rank == 0 && failed)
    std::fprintf(stderr, "parallel_tests: FAILED on at least one of %d ranks\n", size);
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace loom::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::string fault_test;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--fault-test=", 13) == 0) fault_test = argv[i] + 13;
  if (!fault_test.empty()) return loom::test::run_fault_test(fault_test);

  loom::MpiRuntimeOptions options;
  // A mismatch between ranks fails with a diagnosis after a minute instead of hanging.
  options.timeout_s = 60;
  // Global rank 1 posts its third operation on the "delayed" group half a second late
  // (test_async.cpp, DelayedRankInjected).
  options.fault = loom::parse_fault_injection("rank=1,group=delayed,op=2,action=delay,seconds=0.5");
  loom::FlightRecorder flight(4096);  // test_flight_mpi.cpp; outlives the runtime
  options.flight = &flight;
  std::unique_ptr<loom::MpiRuntime> mpi;
  try {
    mpi = loom::mpi_runtime_init(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parallel_tests: cannot start MPI: %s\n", e.what());
    return 1;
  }
  return loom::test::run_tests(*mpi, flight);
}
