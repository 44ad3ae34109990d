// The signals a training process (one rank, or a single-process run) handles, and what each does
// (docs/architecture.md, "Failure handling"):
//
//   SIGUSR1, SIGTERM, SIGINT  every rank stops after the step it is in, a checkpoint is written,
//                             and the run exits with status 75 (continue it with --resume)
//   SIGTERM, SIGINT again     (more than kRepeatWindowS after the first) stop at once: the
//                             newest complete checkpoint stays the newest; status 128 + signal
//   SIGHUP, SIGQUIT           stop at once, as above, after a last line in train.log
//   SIGUSR2                   every rank dumps its flight recorder and goes on
//
// Each stop leaves a last line in train.log (rank 0) and on the terminal. A signal this process
// was told to ignore (nohup's SIGHUP) stays ignored.
//
//   loom::train_signals_install();
//   options.signals = &loom::train_signals();
#pragma once
#include <atomic>
#include <cstdint>

namespace loom {

struct RunSignals;  // core/trainer.h

// A second SIGTERM or SIGINT within this many seconds of the first is the same request delivered
// twice (Slurm signals a job's tasks and its srun, which passes it on), not "stop at once".
constexpr double kRepeatWindowS = 2.0;

// CLOCK_MONOTONIC in milliseconds, never 0 (0 stands for "not yet"); async-signal-safe.
int64_t monotonic_ms();

// This process's signal state (the one global a signal handler needs).
RunSignals& train_signals();
// SIGUSR2s received, for the FlightDumper thread (parallel/flight_recorder.h).
std::atomic<int>& flight_signal_count();

// Installs the handlers above; call before MPI starts, so an early signal cannot kill a rank.
void train_signals_install();

}  // namespace loom
