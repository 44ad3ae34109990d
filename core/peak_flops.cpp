#include "core/peak_flops.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "base/rng.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/threads.h"

namespace loom {
namespace {

constexpr int kGemmSize = 2048;

// The cache's entries: "CPU model<TAB>threads" → TFLOP/s.
std::map<std::string, double> read_cache(const std::filesystem::path& path) {
  std::map<std::string, double> entries;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const size_t tab = line.rfind('\t');
    if (tab == std::string::npos || tab == 0) continue;
    char* end = nullptr;
    const double tflops = std::strtod(line.c_str() + tab + 1, &end);
    if (end != line.c_str() + tab + 1 && tflops > 0) entries[line.substr(0, tab)] = tflops;
  }
  return entries;
}

// Replaces the cache with `entries` (a new file renamed over the old one, so concurrent runs
// read either); a cache that cannot be written is left alone.
void write_cache(const std::filesystem::path& path, const std::map<std::string, double>& entries) {
  std::error_code error;
  std::filesystem::create_directories(path.parent_path(), error);
  const std::filesystem::path temporary =
      path.string() + ".tmp." + std::to_string(static_cast<long>(getpid()));
  {
    std::ofstream out(temporary);
    for (const auto& [key, tflops] : entries) out << key << '\t' << tflops << '\n';
    if (!out.flush()) {
      std::filesystem::remove(temporary, error);
      return;
    }
  }
  std::filesystem::rename(temporary, path, error);
  if (error) std::filesystem::remove(temporary, error);
}

}  // namespace

double gemm_gflops(int n) {
  std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
  Rng rng{7};
  for (float& x : a) x = static_cast<float>(rng.uniform() - 0.5);
  for (float& x : b) x = static_cast<float>(rng.uniform() - 0.5);
  double best = 0.0;
  for (int rep = 0; rep < 6; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    kernels::cpu::matmul_forward(c.data(), a.data(), b.data(), nullptr, n, n, n);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep > 0) best = std::max(best, 2.0 * n * n * n / s / 1e9);  // the first run warms up
  }
  return best;
}

std::filesystem::path peak_cache_path() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "loom" / "peak_tflops.tsv";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::filesystem::path(home) / ".cache" / "loom" / "peak_tflops.tsv";
  return {};
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(" \t"));
    std::replace(name.begin(), name.end(), '\t', ' ');
    if (!name.empty()) return name;
  }
  return "unknown CPU";
}

double cpu_peak_tflops(int threads, bool measure_again) {
  const std::filesystem::path path = peak_cache_path();
  const std::string key = cpu_model_name() + "\t" + std::to_string(threads);
  std::map<std::string, double> entries;
  if (!path.empty()) entries = read_cache(path);
  if (!measure_again)
    if (const auto found = entries.find(key); found != entries.end()) return found->second;
  const double tflops = gemm_gflops(kGemmSize) / 1000.0;
  if (!path.empty()) {
    entries = read_cache(path);  // another run may have added entries meanwhile
    entries[key] = tflops;
    write_cache(path, entries);
  }
  return tflops;
}

double peak_tflops(const config::RuntimeConfig& runtime) {
  if (runtime.peak_tflops() > 0) return runtime.peak_tflops();
  return cpu_peak_tflops(kernels::cpu::thread_count());
}

}  // namespace loom
