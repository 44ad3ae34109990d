#include "core/layout_advice.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/stage_plan.h"

namespace loom {
namespace {

constexpr size_t kMostChoices = 8;  // values offered for one field

std::string num(long v) { return std::to_string(v); }

// "a", "a or b", "a, b or c".
std::string either(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i)
    out += (i == 0 ? "" : i + 1 == items.size() ? " or " : ", ") + items[i];
  return out;
}

std::vector<long> divisors(long n) {
  std::vector<long> low, high;
  for (long d = 1; d * d <= n; ++d)
    if (n % d == 0) {
      low.push_back(d);
      if (d != n / d) high.push_back(n / d);
    }
  low.insert(low.end(), high.rbegin(), high.rend());
  return low;
}

// Up to kMostChoices of `values` nearest `near` (by ratio), ascending, as "1, 2, 4 or 8".
std::string nearest(std::vector<long> values, long near) {
  const double at = std::log(static_cast<double>(std::max(near, 1L)));
  std::stable_sort(values.begin(), values.end(), [&](long a, long b) {
    return std::abs(std::log(static_cast<double>(a)) - at) <
           std::abs(std::log(static_cast<double>(b)) - at);
  });
  if (values.size() > kMostChoices) values.resize(kMostChoices);
  std::sort(values.begin(), values.end());
  std::vector<std::string> items;
  for (long v : values) items.push_back(num(v));
  return either(items);
}

// The multiples of `step` from `least` nearest `value` (below and above it; value itself when it
// is one), as "960 or 1024".
std::string nearest_multiples(long value, long step, long least) {
  std::vector<std::string> items;
  const long below = value / step * step;
  if (below >= least && below > 0) items.push_back(num(below));
  if (below != value || below < least) items.push_back(num(std::max(least, below + step)));
  return either(items);
}

// Whether a batch of G sequences, B per micro-batch on each of D data-parallel ranks, gives
// whole micro-batches that fill a pipeline of pp stages.
bool batch_fits(long G, long B, long D, long pp, bool interleaved) {
  if (G % (B * D) != 0) return false;
  const long m = G / (B * D);
  return (pp == 1 || m >= pp) && (!interleaved || m % pp == 0);
}

}  // namespace

std::string layout_advice_tp(const config::RunConfig& cfg) {
  const long heads = cfg.model().n_heads(), mlp = cfg.model().d_mlp(), tp = cfg.parallel().tp();
  const long kv = cfg.model().n_kv_heads() > 0 ? cfg.model().n_kv_heads() : heads;
  if (heads < 1 || mlp < 1 || tp < 1 || kv < 1 ||
      (heads % tp == 0 && mlp % tp == 0 && kv % tp == 0))
    return "";
  const bool grouped = kv != heads;
  return "try parallel.tp " + nearest(divisors(std::gcd(std::gcd(heads, mlp), kv)), tp) +
         " (dividing " + (grouped ? "model.n_heads " : "both model.n_heads ") + num(heads) +
         (grouped ? ", model.n_kv_heads " + num(kv) + "," : "") + " and model.d_mlp " + num(mlp) +
         ")";
}

std::string layout_advice_batch(const config::RunConfig& cfg) {
  const auto& p = cfg.parallel();
  const long G = cfg.train().global_batch(), B = cfg.train().micro_batch(), D = p.dp();
  const long pp = p.pp();
  const bool interleaved = p.pipeline_schedule() == config::ParallelConfig::INTERLEAVED_1F1B;
  if (G < 1 || B < 1 || D < 1 || pp < 1 || static_cast<double>(B) * D * pp > 1e15 ||
      batch_fits(G, B, D, pp, interleaved))
    return "";
  std::vector<std::string> ways;
  const long step = B * D * (interleaved ? pp : 1), least = B * D * pp;
  ways.push_back("train.global_batch " + nearest_multiples(G, step, least) + " (a multiple of " +
                 (interleaved ? "pp × " : "") + "micro_batch × dp = " + num(step) +
                 (pp > 1 ? ", at least pp × micro_batch × dp = " + num(least) : "") + ")");
  std::vector<long> micro, data;
  if (G % D == 0)
    for (long b : divisors(G / D))
      if (batch_fits(G, b, D, pp, interleaved)) micro.push_back(b);
  if (G % B == 0)
    for (long d : divisors(G / B))
      if (batch_fits(G, B, d, pp, interleaved)) data.push_back(d);
  if (!micro.empty()) ways.push_back("train.micro_batch " + nearest(micro, B));
  if (!data.empty()) ways.push_back("parallel.dp " + nearest(data, D));
  return "try " + either(ways);
}

std::string layout_advice_seq_len(const config::RunConfig& cfg) {
  const auto& p = cfg.parallel();
  const long T = cfg.train().seq_len(), sp = p.sp();
  const bool zigzag = p.sequence_layout() == config::ParallelConfig::ZIGZAG;
  const long unit = zigzag ? 2 * sp : sp;
  if (T < 1 || sp < 1 || T % unit == 0) return "";
  std::vector<std::string> ways;
  std::string lengths = "train.seq_len " + nearest_multiples(T, unit, unit);
  if (T / unit * unit + unit > cfg.model().max_seq_len())
    lengths += " (model.max_seq_len raised with it)";
  ways.push_back(lengths);
  std::vector<long> sps;
  if (!zigzag || T % 2 == 0) sps = divisors(zigzag ? T / 2 : T);
  if (!sps.empty()) ways.push_back("parallel.sp " + nearest(sps, sp));
  if (zigzag && T % sp == 0) ways.push_back("parallel.sequence_layout CONTIGUOUS");
  return "try " + either(ways);
}

std::string layout_advice_pieces(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const long pp = cfg.parallel().pp(), v = cfg.parallel().virtual_stages();
  const long layers = unrolled_layers(m), pieces = pp * v;
  if (pp < 1 || v < 1 || layers < 1 || pieces <= layers) return "";
  std::vector<std::string> ways;
  if (layers / v >= 2) ways.push_back("parallel.pp ≤ " + num(layers / v));
  if (v > 1 && layers / pp >= 2) ways.push_back("parallel.virtual_stages ≤ " + num(layers / pp));
  const long rest = pieces - m.prelude_layers() - m.coda_layers();
  if (m.block_layers() > 0 && rest > 0)
    ways.push_back("model.loops ≥ " + num((rest + m.block_layers() - 1) / m.block_layers()));
  return ways.empty() ? "" : "try " + either(ways);
}

}  // namespace loom
