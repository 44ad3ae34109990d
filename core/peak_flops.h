// The peak FLOP rate of one rank, MFU's denominator (docs/architecture.md, "Utilisation").
//
// On the CPU (and the EMULATED device, which runs the CPU kernels) it is measured: the best of
// five 2048³ fp32 GEMMs through the kernels at the thread count in effect. A measurement is
// cached per CPU model and thread count in $XDG_CACHE_HOME/loom/peak_tflops.tsv (by default
// ~/.cache/loom/peak_tflops.tsv), so a machine pays for it once; `loom bench sgemm` measures
// again and replaces the entry; runtime.peak_tflops overrides it.
//
//   const double peak = loom::peak_tflops(cfg.runtime());  // TFLOP/s of one rank
#pragma once
#include <filesystem>
#include <string>

#include "loom.pb.h"

namespace loom {

// GFLOP/s of an n×n×n fp32 GEMM through the CPU kernels, best of five after a warm-up.
double gemm_gflops(int n);

// The cache file (empty when neither XDG_CACHE_HOME nor HOME is set).
std::filesystem::path peak_cache_path();

// This machine's CPU model (from /proc/cpuinfo; "unknown CPU" where it says none).
std::string cpu_model_name();

// The CPU's peak TFLOP/s at `threads` threads: the cached measurement, or a new one (cached when
// the cache can be written). With `measure_again` it is measured and the cache entry replaced.
double cpu_peak_tflops(int threads, bool measure_again = false);

// runtime.peak_tflops when set, else the measured CPU peak at the thread count in effect.
double peak_tflops(const config::RuntimeConfig& runtime);

}  // namespace loom
