// init_threads: thread counts for OpenMP and OpenBLAS, and flush-to-zero on every thread.
#include <gtest/gtest.h>
#include <omp.h>
#include <xmmintrin.h>

#include <vector>

#include "kernels/cpu/threads.h"

namespace loom::kernels::test {
namespace {

TEST(Threads, ExplicitAndDefaultCounts) {
  EXPECT_EQ(1, cpu::init_threads(1));
  EXPECT_EQ(1, cpu::thread_count());
  EXPECT_EQ(1, omp_get_max_threads());
  const int all = cpu::init_threads(0);
  EXPECT_EQ(omp_get_num_procs(), all);
  EXPECT_EQ(all, cpu::thread_count());
  EXPECT_EQ(all, omp_get_max_threads());
}

TEST(Threads, FlushToZeroOnEveryThread) {
  const int threads = cpu::init_threads(2);
  std::vector<int> flags(threads, 0);
#pragma omp parallel
  flags[omp_get_thread_num()] = static_cast<int>(_mm_getcsr() & 0x8040);
  for (int t = 0; t < threads; t++) EXPECT_EQ(0x8040, flags[t]) << "thread " << t;
  // A product below the smallest normal float becomes zero instead of a denormal.
  volatile float tiny = 1e-30f;
  volatile float product = tiny * 1e-10f;
  EXPECT_EQ(0.0f, product);
  cpu::init_threads(0);
}

}  // namespace
}  // namespace loom::kernels::test
