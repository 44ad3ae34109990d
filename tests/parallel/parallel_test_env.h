// What the multi-rank tests of parallel/ share: the process's MPI runtime and its groups, set up
// once by parallel_tests_main.cpp before any test runs, plus deterministic per-rank data.
//
// Invariant: every rank runs the same tests in the same order and issues the same collectives,
// so tests use EXPECT_* (never ASSERT_*, which would return early on one rank and leave the
// others waiting) around collective calls.
//
//   for (loom::Communicator* c : loom::test::communicators()) {
//     c->all_reduce(data.data(), data.size());
//   }
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/flight_recorder.h"
#include "parallel/groups.h"
#include "parallel/mpi_runtime.h"

namespace loom::test {

struct ParallelTestContext {
  MpiRuntime* mpi = nullptr;
  ProcessGroups* groups = nullptr;  // Mesh{dp = 2, tp = world / 2}: real sub-groups
  Communicator* world = nullptr;
  Communicator* delayed = nullptr;   // every rank; op 2 of global rank 1 is held back (LOOM_FAULT)
  FlightRecorder* flight = nullptr;  // records every operation of every group
};
ParallelTestContext& context();

// The communicators every collective is tested on: world, tp, dp, dp_sp and a group of one (pp).
std::vector<Communicator*> communicators();

// Element i of group rank r's input: a multiple of 1/4 below 64 in magnitude, so sums over up to
// 8 ranks are exact in float32 and float64 and the references need no tolerance.
inline double input_value(int rank, size_t i, int salt = 0) {
  return static_cast<double>(static_cast<long>((rank * 37 + i * 11 + salt * 5) % 255) - 127) / 4;
}

template <typename T>
std::vector<T> input_vector(int rank, size_t n, int salt = 0) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<T>(input_value(rank, i, salt));
  return v;
}

// got == expected elementwise within `tolerance` (relative to max(1, |expected|)); the failure
// message names `what` and the first mismatch, not every element.
template <typename T>
::testing::AssertionResult same_values(const std::vector<T>& got, const std::vector<T>& expected,
                                       const std::string& what, double tolerance = 0) {
  if (got.size() != expected.size())
    return ::testing::AssertionFailure()
           << what << ": size " << got.size() << " != " << expected.size();
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], e = expected[i];
    const double limit = tolerance * std::max(1.0, std::fabs(e));
    if (!(std::fabs(g - e) <= limit)) {
      if (wrong++ == 0) first = i;
    }
  }
  if (wrong == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << wrong << " of " << got.size() << " elements wrong, first at " << first
         << ": got " << got[first] << ", expected " << expected[first];
}

// A label for messages: "all_reduce on tp (rank 1 of 2), n = 7".
inline std::string describe(const char* operation, const Communicator& comm, size_t n) {
  return std::string(operation) + " on " + comm.name() + " (rank " + std::to_string(comm.rank()) +
         " of " + std::to_string(comm.size()) + "), n = " + std::to_string(n);
}

}  // namespace loom::test
