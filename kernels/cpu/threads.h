// CPU execution context: thread count for OpenMP and OpenBLAS, and flush-to-zero.
//
// Denormal floats are ~10x slower on the machines loom targets, so every thread that computes
// runs with FTZ/DAZ set. Call once at start-up, before any kernel.
//
//   loom::kernels::cpu::init_threads(config.runtime().threads());  // 0 = all cores
#pragma once

namespace loom::kernels::cpu {

// Sets the OpenMP and OpenBLAS thread count (0 = number of cores) and FTZ/DAZ on every OpenMP
// thread. Returns the thread count in effect.
int init_threads(int threads);

// For a thread other than the one that called init_threads which runs kernels (a device
// worker): its OpenMP team size becomes thread_count() and FTZ/DAZ is set on it and its team.
void adopt_thread_settings();

// Thread count in effect (as set by init_threads; OpenMP's default team size before that).
int thread_count();

}  // namespace loom::kernels::cpu
