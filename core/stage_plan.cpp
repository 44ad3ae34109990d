#include "core/stage_plan.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "base/error.h"
#include "core/config.h"
#include "parallel/pipeline_schedule.h"

namespace loom {
namespace {

using config::ModelConfig;

std::string num(long v) { return std::to_string(v); }

// FLOPs per token of forward + backward (3 × forward): one layer's matmuls and causal attention;
// the LM head's matmul (cross-entropy's softmax is a few operations per logit more); the
// embedding's look-up and its gradient's scatter-add.
struct Costs {
  double layer, head, embedding;
};

Costs costs_of(const config::RunConfig& cfg) {
  const ModelConfig& m = cfg.model();
  const double C = m.d_model(), V = m.vocab_size(), T = cfg.train().seq_len();
  return {3.0 * layer_forward_flops(m, static_cast<int>(T)), 3.0 * (2.0 * C * V + 5.0 * V),
          3.0 * 2.0 * C};
}

double piece_cost(const Costs& c, int begin, int end, int positions) {
  return (end - begin) * c.layer + (begin == 0 ? c.embedding : 0.0) +
         (end == positions ? c.head : 0.0);
}

// Contiguous pieces minimising the largest cost, then the sum of squared costs (so equal layers
// spread evenly). Only the first piece (embedding) and the last (head) cost more than their
// layers, so for a given first and last length the middle pieces split their layers evenly.
// For each first length the objective is convex in the last length around the point where the
// last and middle pieces balance, so a few lengths either side of it are tried. That is O(layers)
// rather than a dynamic programme's O(pieces × layers²), which matters at 10⁶ unrolled layers.
std::vector<int> balanced_bounds(const Costs& c, int positions, int pieces) {
  if (pieces == 1) return {0, positions};
  struct Best {
    double max = std::numeric_limits<double>::infinity(), squares = 0;
    bool operator<(const Best& o) const {
      return max < o.max * (1 - 1e-12) || (max <= o.max * (1 + 1e-12) && squares < o.squares);
    }
  };
  const long n = positions, middle = pieces - 2;
  auto evaluate = [&](long first, long last) {
    const double c1 = first * c.layer + c.embedding, cl = last * c.layer + c.head;
    Best b{std::max(c1, cl), c1 * c1 + cl * cl};
    if (middle > 0) {
      const long m = n - first - last, q = m / middle, r = m % middle;
      const double lo = q * c.layer, hi = (q + 1) * c.layer;
      b.max = std::max(b.max, r > 0 ? hi : lo);
      b.squares += (middle - r) * lo * lo + r * hi * hi;
    }
    return b;
  };
  Best best;
  long best_first = 1, best_last = n - 1;
  const double head_layers = c.layer > 0 ? c.head / c.layer : 0;
  for (long first = 1; first <= n - (pieces - 1); ++first) {
    const long rest = n - first, most = rest - middle;  // the last piece's longest
    const double even = (rest + head_layers) / (pieces - 1) - head_layers;
    const long balance = std::lround(std::clamp(even, -4.0, rest + 4.0));
    const long window[] = {1, most, balance - 3, balance - 2, balance - 1, balance,
                           balance + 1, balance + 2, balance + 3};
    for (long last : window) {
      if (middle == 0) last = most;
      last = std::clamp(last, 1L, most);
      const Best b = evaluate(first, last);
      if (b < best) best = b, best_first = first, best_last = last;
    }
  }
  // Middle pieces: the shorter ones first.
  std::vector<int> bounds{0, static_cast<int>(best_first)};
  const long m = n - best_first - best_last;
  for (long k = 0; k < middle; ++k)
    bounds.push_back(bounds.back() + static_cast<int>(m / middle + (k >= middle - m % middle)));
  bounds.push_back(positions);
  return bounds;
}

// A V (ZERO_BUBBLE_V): rank r runs pieces r and 2·pp − 1 − r, so it is the ranks' loads that
// must balance, not the pieces'. Rank 0 holds the embedding and the head beside x layers; the
// other ranks share the rest evenly; the x with the smallest largest load (then sum of squares)
// wins. Each rank's layers are then cut into its two pieces, rank 0's so that its two chunks
// cost about the same (the embedding's piece and the head's).
std::vector<int> v_bounds(const Costs& c, int positions, int pp) {
  const long n = positions, others = pp - 1;
  auto loads = [&](long x) {  // (largest rank load, sum of squares)
    const double first = x * c.layer + c.embedding + c.head;
    if (others == 0) return std::pair{first, first * first};
    const long q = (n - x) / others, r = (n - x) % others;
    const double lo = q * c.layer, hi = (q + 1) * c.layer;
    return std::pair{std::max(first, r > 0 ? hi : lo),
                     first * first + (others - r) * lo * lo + r * hi * hi};
  };
  long best = others == 0 ? n : 2;
  for (long x = 2; others > 0 && x <= n - 2 * others; ++x) {
    const auto [most, squares] = loads(x);
    const auto [best_most, best_squares] = loads(best);
    if (most < best_most * (1 - 1e-12) ||
        (most <= best_most * (1 + 1e-12) && squares < best_squares))
      best = x;
  }
  std::vector<long> sizes(2 * pp);
  // Rank 0: a + E/L ≈ b + H/L with a + b = best, each at least 1.
  const double shift = c.layer > 0 ? (c.head - c.embedding) / c.layer : 0;
  const long a = std::clamp(std::lround((best + shift) / 2), 1L, best - 1);
  sizes[0] = a;
  sizes[2 * pp - 1] = best - a;
  for (long r = 1; r <= others; ++r) {  // the last (n − best) % others ranks get one more
    const long layers = (n - best) / others + (r > others - (n - best) % others);
    sizes[r] = layers / 2;
    sizes[2 * pp - 1 - r] = layers - layers / 2;
  }
  std::vector<int> bounds{0};
  for (long s : sizes) bounds.push_back(bounds.back() + static_cast<int>(s));
  LOOM_CHECK(bounds.back() == positions);
  return bounds;
}

std::vector<int> explicit_bounds(const std::string& layout, int positions, int pieces) {
  const std::string where = "parallel.pipeline_layout \"" + layout + "\": ";
  std::vector<int> bounds{0};
  size_t at = 0;
  while (at <= layout.size()) {  // each item: spaces, digits, spaces
    const size_t comma = std::min(layout.find(',', at), layout.size());
    const std::string item = layout.substr(at, comma - at);
    const size_t first = item.find_first_not_of(' '), last = item.find_last_not_of(' ');
    const std::string digits = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (digits.empty() || digits.size() > 6 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      throw Error(where + "\"" + item + "\" is not a number of layers; write e.g. \"3,4,4,3\"");
    const int layers = std::stoi(digits);
    if (layers < 1) throw Error(where + "every piece needs at least one unrolled layer");
    bounds.push_back(bounds.back() + layers);
    at = comma + 1;
  }
  if (static_cast<int>(bounds.size()) - 1 != pieces)
    throw Error(where + "has " + num(bounds.size() - 1) + " numbers but the pipeline has " +
                num(pieces) + " pieces (parallel.pp × parallel.virtual_stages)");
  if (bounds.back() != positions)
    throw Error(where + "sums to " + num(bounds.back()) + " but the model has " + num(positions) +
                " unrolled layers (prelude_layers + block_layers × loops + coda_layers)");
  return bounds;
}

// "block.0–1" or "block.1".
std::string layer_span(const char* part, int first, int last) {
  std::string s = std::string(part) + "." + num(first);
  if (last > first) s += "–" + num(last);
  return s;
}

}  // namespace

double layer_matmul_flops(const ModelConfig& m) {
  const double C = m.d_model(), F = m.d_mlp();
  const double Ckv = static_cast<double>(model_kv_heads(m)) * (C / m.n_heads());
  const double mlp_in = m.mlp() == ModelConfig::SWIGLU ? 2 * F : F;  // SwiGLU's gate and up
  return 2.0 * ((C + 2 * Ckv) * C + C * C + mlp_in * C + F * C);
}

double layer_forward_flops(const ModelConfig& m, int T) {
  // Causal attention: q·kᵀ and p·v over (T + 1) / 2 keys on average, per channel.
  return layer_matmul_flops(m) + 2.0 * 2.0 * m.d_model() * (T + 1) / 2.0;
}

double layer_model_flops(const ModelConfig& m, int T) {
  return layer_matmul_flops(m) + 2.0 * 2.0 * m.d_model() * T;
}

int unrolled_layers(const ModelConfig& m) {
  return m.prelude_layers() + m.block_layers() * m.loops() + m.coda_layers();
}

StagePlan stage_plan_single(const ModelConfig& model) {
  return StagePlan{1, 1, {0, unrolled_layers(model)}};
}

StagePlan stage_plan_create(const config::RunConfig& cfg) {
  const auto& p = cfg.parallel();
  StagePlan plan{p.pp(),
                 p.virtual_stages(),
                 {},
                 p.pipeline_schedule() == config::ParallelConfig::ZERO_BUBBLE_V};
  const int positions = unrolled_layers(cfg.model());
  if (plan.pieces() > positions)
    throw Error("parallel.pp × parallel.virtual_stages (" + num(p.pp()) + " × " +
                num(p.virtual_stages()) + ") is more pipeline pieces than the model's " +
                num(positions) + " unrolled layers; every piece runs at least one layer");
  if (!p.pipeline_layout().empty())
    plan.bounds = explicit_bounds(p.pipeline_layout(), positions, plan.pieces());
  else if (plan.v_shape)
    plan.bounds = v_bounds(costs_of(cfg), positions, plan.pp);
  else
    plan.bounds = balanced_bounds(costs_of(cfg), positions, plan.pieces());
  return plan;
}

std::vector<double> stage_plan_costs(const config::RunConfig& cfg, const StagePlan& plan) {
  const Costs c = costs_of(cfg);
  std::vector<double> out;
  for (int g = 0; g < plan.pieces(); ++g)
    out.push_back(piece_cost(c, plan.bounds[g], plan.bounds[g + 1], plan.positions()));
  return out;
}

std::vector<int> stage_plan_pieces(const StagePlan& plan, int rank) {
  LOOM_CHECK(rank >= 0 && rank < plan.pp);
  std::vector<int> pieces;
  for (int c = 0; c < plan.virtual_stages; ++c)
    pieces.push_back(pipeline_stage_of(plan.pp, plan.v_shape, rank, c));
  return pieces;
}

int stage_plan_rank_of(const StagePlan& plan, int piece) {
  LOOM_CHECK(piece >= 0 && piece < plan.pieces());
  return pipeline_rank_of(plan.pp, plan.v_shape, piece);
}

bool stage_plan_runs_layer(const ModelConfig& m, const StagePlan& plan, int rank, int layer) {
  const int P = m.prelude_layers(), K = m.block_layers();
  for (int g : stage_plan_pieces(plan, rank))
    for (int pos = plan.bounds[g]; pos < plan.bounds[g + 1]; ++pos) {
      const int loop_end = P + K * m.loops();
      const int u = pos < P ? pos : pos < loop_end ? P + (pos - P) % K : pos - loop_end + P + K;
      if (u == layer) return true;
    }
  return false;
}

std::string stage_plan_describe(const ModelConfig& m, int begin, int end) {
  const int P = m.prelude_layers(), K = m.block_layers(), R = m.loops();
  const int loop_end = P + K * R;
  std::vector<std::string> parts;
  if (begin < P) parts.push_back(layer_span("prelude", begin, std::min(end, P) - 1));
  const int a = std::max(begin, P), b = std::min(end, loop_end);  // loop positions [a, b)
  if (a < b) {
    const int i0 = (a - P) / K, j0 = (a - P) % K, i1 = (b - 1 - P) / K, j1 = (b - 1 - P) % K;
    const char* block = R == 1 ? "layers" : "block";
    auto iteration = [&](int i) { return R == 1 ? std::string() : " of iteration " + num(i); };
    if (i0 == i1) {
      parts.push_back(layer_span(block, j0, j1) + iteration(i0));
    } else {
      int full_first = i0, full_last = i1;
      if (j0 > 0) parts.push_back(layer_span(block, j0, K - 1) + iteration(full_first++));
      std::string tail;
      if (j1 < K - 1) tail = layer_span(block, 0, j1) + iteration(full_last--);
      if (full_first <= full_last)
        parts.push_back(layer_span(block, 0, K - 1) +
                        (full_first == full_last ? " of iteration " + num(full_first)
                                                 : " × iterations " + num(full_first) + "–" +
                                                       num(full_last)));
      if (!tail.empty()) parts.push_back(tail);
    }
  }
  if (end > loop_end) parts.push_back(layer_span("coda", std::max(begin, loop_end) - loop_end,
                                                 end - 1 - loop_end));
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace loom
