#include "kernels/cpu/threads.h"

#include <cblas.h>
#include <omp.h>
#include <xmmintrin.h>

#include <atomic>

namespace loom::kernels::cpu {
namespace {

// Mirrors the team size handed to OpenMP and OpenBLAS; 0 until init_threads runs. Kept here
// because kernels size per-thread scratch from it and it must agree with the OpenMP team.
// Atomic: a device worker thread (kernels/emulated) reads it while the main thread may set it.
std::atomic<int> threads_in_effect{0};

// MXCSR bit 15 is flush-to-zero, bit 6 denormals-are-zero. The register is per thread, so it
// has to be set on each thread of the OpenMP pool (which OpenBLAS's OpenMP build reuses).
void set_flush_to_zero() { _mm_setcsr(_mm_getcsr() | 0x8040); }

}  // namespace

int init_threads(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
#pragma omp parallel
  set_flush_to_zero();
  // The caller is the region's master thread and so already covered; setting it again keeps
  // the guarantee independent of how the runtime forms teams.
  set_flush_to_zero();
  threads_in_effect = threads;
  return threads;
}

void adopt_thread_settings() {
  omp_set_num_threads(thread_count());
#pragma omp parallel
  set_flush_to_zero();
  set_flush_to_zero();
}

int thread_count() {
  // Before init_threads, report what an OpenMP region would use, so scratch sized from this
  // still matches the team that runs the kernel.
  const int threads = threads_in_effect.load();
  return threads > 0 ? threads : omp_get_max_threads();
}

}  // namespace loom::kernels::cpu
