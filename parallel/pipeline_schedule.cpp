#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "base/error.h"

namespace loom {
namespace {

using Type = PipelineAction::Type;
using Key = std::tuple<int, int, int>;  // (type, micro, chunk)

Key key_of(const PipelineAction& a) { return {static_cast<int>(a.type), a.micro, a.chunk}; }

bool is_compute(const PipelineAction& a) {
  return a.type == Type::kForward || a.type == Type::kBackward || a.type == Type::kWeight;
}

// Where the p · v global stages sit (pipeline_stage_of): in a V rank p − 1 runs stages p − 1 and
// p back to back (a transfer to itself) and rank 0 the first and the last.
struct Placement {
  int p = 1, v = 1;
  bool v_shape = false;
  int stages() const { return p * v; }
  int stage(int rank, int chunk) const { return pipeline_stage_of(p, v_shape, rank, chunk); }
  int rank_of(int g) const { return pipeline_rank_of(p, v_shape, g); }
  int chunk_of(int g) const { return g / p; }
};

// The receive compute `c` of `rank` consumes; false when it needs none: the forward of global
// stage 0 reads the batch, the backward of the last stage starts from its own loss.
bool input_of(const PipelineAction& c, const Placement& at, int rank, PipelineAction* recv) {
  const int g = at.stage(rank, c.chunk);
  if (c.type == Type::kForward && g > 0) {
    *recv = {Type::kRecvForward, c.micro, c.chunk};
    return true;
  }
  if (c.type == Type::kBackward && g < at.stages() - 1) {
    *recv = {Type::kRecvBackward, c.micro, c.chunk};
    return true;
  }
  return false;
}

// The rank a receive posted by `rank` is matched with (itself at a V's turn).
int source_of(const PipelineAction& recv, const Placement& at, int rank) {
  const int g = at.stage(rank, recv.chunk);
  return at.rank_of(recv.type == Type::kRecvForward ? g - 1 : g + 1);
}

// What compute `c` of `rank` sends, if anything: to *dest, described as the receive *dest posts.
bool output_of(const PipelineAction& c, const Placement& at, int rank, int* dest,
               PipelineAction* recv) {
  const int g = at.stage(rank, c.chunk);
  int to = -1;
  if (c.type == Type::kForward && g < at.stages() - 1) to = g + 1;
  if (c.type == Type::kBackward && g > 0) to = g - 1;
  if (to < 0) return false;
  *dest = at.rank_of(to);
  *recv = {c.type == Type::kForward ? Type::kRecvForward : Type::kRecvBackward, c.micro,
           at.chunk_of(to)};
  return true;
}

// The compute a receive feeds, e.g. recvF3.1 → F3.1.
PipelineAction consumer_of(const PipelineAction& recv) {
  return {recv.type == Type::kRecvForward ? Type::kForward : Type::kBackward, recv.micro,
          recv.chunk};
}

// Megatron's k-th forward (backward) of a step: micro-batches go in groups of p, each group
// through chunks 0, 1, ... (backward v − 1, ..., 0) before the next group. With v = 1 it is
// micro-batch k.
PipelineAction nth_compute(Type type, int k, int p, int v) {
  const int in_group = k % (p * v);
  const int chunk = type == Type::kForward ? in_group / p : v - 1 - in_group / p;
  return {type, k / (p * v) * p + k % p, chunk};
}

// `warmup` forwards, then forward / backward pairs, then the remaining backwards.
std::vector<PipelineAction> one_f_one_b(int p, int total, int v, int warmup) {
  std::vector<PipelineAction> out;
  for (int k = 0; k < warmup; ++k) out.push_back(nth_compute(Type::kForward, k, p, v));
  for (int k = 0; k < total - warmup; ++k) {
    out.push_back(nth_compute(Type::kForward, warmup + k, p, v));
    out.push_back(nth_compute(Type::kBackward, k, p, v));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(nth_compute(Type::kBackward, k, p, v));
  return out;
}

// One rank's list. Before compute k the receives of computes k and k + 1 are posted. Untagged
// sends and receives between two ranks match in issue order, so a receive from peer a goes after
// every earlier message in a's send order (`incoming`): those are posted with it if need be.
std::vector<PipelineAction> with_receives(const std::vector<PipelineAction>& order,
                                          const std::vector<std::vector<PipelineAction>>& incoming,
                                          const Placement& at, int rank) {
  std::vector<PipelineAction> out;
  std::vector<size_t> next(at.p, 0);  // incoming[a][0 .. next[a]) are posted
  std::set<Key> posted;
  auto post = [&](const PipelineAction& recv) {
    if (posted.count(key_of(recv))) return;
    const std::vector<PipelineAction>& from = incoming[source_of(recv, at, rank)];
    size_t& n = next[source_of(recv, at, rank)];
    const auto it = std::find(from.begin() + n, from.end(), recv);
    if (it == from.end()) {  // never sent: pipeline_simulate reports the schedule
      posted.insert(key_of(recv));
      out.push_back(recv);
      return;
    }
    for (const size_t upto = it - from.begin(); n <= upto; ++n) {
      posted.insert(key_of(from[n]));
      out.push_back(from[n]);
    }
  };
  for (size_t k = 0; k < order.size(); ++k) {
    for (size_t j = k; j < std::min(k + 2, order.size()); ++j) {
      LOOM_CHECK(is_compute(order[j]));
      PipelineAction recv;
      if (input_of(order[j], at, rank, &recv)) post(recv);
    }
    out.push_back(order[k]);
  }
  return out;
}

// ZB-H1's orders of every rank (pipeline_schedule.h): a simulation of all stages with unit
// times. ready_f[r][i] / ready_b[r][i]: when F(i) / B(i) of stage r can start (its input arrived).
struct ZeroBubble {
  std::vector<std::vector<PipelineAction>> orders;
  int span = 0;  // units of time until the last stage finishes
};

ZeroBubble zero_bubble(int p, int m) {
  constexpr int kNever = 1 << 30;
  std::vector<std::vector<int>> ready_f(p, std::vector<int>(m, kNever)),
      ready_b(p, std::vector<int>(m, kNever));
  for (int i = 0; i < m; ++i) ready_f[0][i] = 0;
  struct Stage {
    int next_f = 0, next_b = 0, in_flight = 0, busy_until = 0;
    std::vector<int> pending_w;  // micro-batches whose B ran, oldest first
  };
  std::vector<Stage> stages(p);
  std::vector<std::vector<PipelineAction>> orders(p);
  auto done = [&](const Stage& s) { return s.next_b == m && s.pending_w.empty(); };
  int t = 0;
  for (; !std::all_of(stages.begin(), stages.end(), done); ++t) {
    for (int r = 0; r < p; ++r) {
      Stage& s = stages[r];
      if (s.busy_until > t || done(s)) continue;
      if (s.next_b < s.next_f && ready_b[r][s.next_b] <= t) {
        const int i = s.next_b++;
        orders[r].push_back({Type::kBackward, i, 0});
        if (r > 0) ready_b[r - 1][i] = t + 1;
        s.pending_w.push_back(i);
      } else if (s.next_f < m && ready_f[r][s.next_f] <= t && s.in_flight < p - r) {
        const int i = s.next_f++;
        orders[r].push_back({Type::kForward, i, 0});
        ++s.in_flight;
        (r + 1 < p ? ready_f[r + 1][i] : ready_b[r][i]) = t + 1;
      } else if (!s.pending_w.empty()) {
        orders[r].push_back({Type::kWeight, s.pending_w.front(), 0});
        s.pending_w.erase(s.pending_w.begin());
        --s.in_flight;
      } else {
        continue;  // idle: waiting for a neighbour
      }
      s.busy_until = t + 1;
    }
    LOOM_CHECK(t < 4 * m * p + 16);  // every stage can always free memory with a W
  }
  int span = 0;
  for (const Stage& s : stages) span = std::max(span, s.busy_until);
  return {std::move(orders), span};
}

// ZB-V's orders of every rank (pipeline_schedule.h): a simulation of the V's 2p stages in time
// units where a chunk's F, B and W take kVForward, kVBackward and kVWeight. When a rank is free
// it runs, of what has arrived: a B (chunk 0's first: it finishes a micro-batch); else an F
// (chunk 1's first: it brings a micro-batch to the loss sooner) while fewer than 2p (micro-batch,
// chunk) activations are held, 1F1B's peak in half-stage chunks; else its oldest pending W. When
// nothing has arrived, whatever arrives first. The rank that can start soonest goes next.
constexpr long kVForward = 5, kVBackward = 6, kVWeight = 4;

ZeroBubble zero_bubble_v(int p, int m) {
  constexpr long kNever = std::numeric_limits<long>::max();
  const Placement at{p, 2, true};
  const int stages = at.stages();
  std::vector<std::vector<long>> ready_f(stages, std::vector<long>(m, kNever)),
      ready_b(stages, std::vector<long>(m, kNever));
  for (int i = 0; i < m; ++i) ready_f[0][i] = 0;
  struct Rank {
    int next_f[2] = {0, 0}, next_b[2] = {0, 0}, in_flight = 0;
    long free = 0;
    std::vector<std::pair<int, int>> pending_w;  // (micro-batch, chunk) whose B ran, oldest first
  };
  struct Choice {
    Type type = Type::kWeight;
    int chunk = 0;
    long start = kNever;
  };
  std::vector<Rank> ranks(p);
  std::vector<std::vector<PipelineAction>> orders(p);
  auto done = [&](const Rank& s) {
    return s.next_b[0] == m && s.next_b[1] == m && s.pending_w.empty();
  };
  // Rank r's next compute and when it can start (start kNever: nothing can).
  auto choose = [&](const Rank& s, int r) {
    std::vector<Choice> candidates;  // in order of preference within a type
    for (const int c : {0, 1})
      if (s.next_b[c] < s.next_f[c])
        candidates.push_back({Type::kBackward, c, ready_b[at.stage(r, c)][s.next_b[c]]});
    for (const int c : {1, 0})
      if (s.next_f[c] < m && s.in_flight < 2 * p)
        candidates.push_back({Type::kForward, c, ready_f[at.stage(r, c)][s.next_f[c]]});
    if (!s.pending_w.empty()) candidates.push_back({Type::kWeight, 0, s.free});
    for (Choice& x : candidates) x.start = std::max(x.start, s.free);
    Choice best;  // the first that has arrived when the rank is free, else the first to arrive
    for (const Choice& x : candidates)
      if (x.start == s.free) return x;
    for (const Choice& x : candidates)
      if (x.start < best.start) best = x;
    return best;
  };
  while (!std::all_of(ranks.begin(), ranks.end(), done)) {
    int r = -1;
    Choice next;
    for (int k = 0; k < p; ++k) {
      if (done(ranks[k])) continue;
      const Choice x = choose(ranks[k], k);
      if (x.start < next.start) next = x, r = k;
    }
    LOOM_CHECK(r >= 0);  // some rank can always run: the first stage's forwards, or a W
    Rank& s = ranks[r];
    const int c = next.chunk, g = at.stage(r, c);
    if (next.type == Type::kBackward) {
      const int i = s.next_b[c]++;
      orders[r].push_back({Type::kBackward, i, c});
      s.free = next.start + kVBackward;
      if (g > 0) ready_b[g - 1][i] = s.free;
      s.pending_w.push_back({i, c});
    } else if (next.type == Type::kForward) {
      const int i = s.next_f[c]++;
      orders[r].push_back({Type::kForward, i, c});
      s.free = next.start + kVForward;
      ++s.in_flight;
      (g + 1 < stages ? ready_f[g + 1][i] : ready_b[g][i]) = s.free;
    } else {
      const auto [micro, chunk] = s.pending_w.front();
      orders[r].push_back({Type::kWeight, micro, chunk});
      s.pending_w.erase(s.pending_w.begin());
      s.free = next.start + kVWeight;
      --s.in_flight;
    }
  }
  long span = 0;
  for (const Rank& s : ranks) span = std::max(span, s.free);
  return {std::move(orders), static_cast<int>(span)};
}

std::vector<std::vector<PipelineAction>> all_compute_orders(PipelineKind kind, int p, int m,
                                                            int v) {
  if (kind == PipelineKind::kZeroBubbleH1 || kind == PipelineKind::kZeroBubbleV) {
    pipeline_check(kind, p, m, v);
    return (kind == PipelineKind::kZeroBubbleV ? zero_bubble_v(p, m) : zero_bubble(p, m)).orders;
  }
  std::vector<std::vector<PipelineAction>> orders;
  for (int r = 0; r < p; ++r) orders.push_back(pipeline_compute_order(kind, p, m, v, r));
  return orders;
}

}  // namespace

bool pipeline_v_shape(PipelineKind kind) { return kind == PipelineKind::kZeroBubbleV; }

int pipeline_stage_of(int p, bool v_shape, int rank, int chunk) {
  return v_shape && chunk == 1 ? 2 * p - 1 - rank : chunk * p + rank;
}

int pipeline_rank_of(int p, bool v_shape, int g) {
  return v_shape && g >= p ? 2 * p - 1 - g : g % p;
}

const char* pipeline_kind_name(PipelineKind kind) {
  switch (kind) {
    case PipelineKind::kGPipe: return "GPIPE";
    case PipelineKind::kOneFOneB: return "ONE_F_ONE_B";
    case PipelineKind::kInterleaved1F1B: return "INTERLEAVED_1F1B";
    case PipelineKind::kZeroBubbleH1: return "ZERO_BUBBLE_H1";
    case PipelineKind::kZeroBubbleV:
      return "ZERO_BUBBLE_V";
  }
  LOOM_CHECK(false);
}

const char* pipeline_kind_title(PipelineKind kind) {
  switch (kind) {
    case PipelineKind::kGPipe: return "GPipe";
    case PipelineKind::kOneFOneB: return "1F1B";
    case PipelineKind::kInterleaved1F1B: return "interleaved 1F1B";
    case PipelineKind::kZeroBubbleH1: return "zero-bubble H1";
    case PipelineKind::kZeroBubbleV:
      return "zero-bubble V";
  }
  LOOM_CHECK(false);
}

std::string pipeline_action_string(const PipelineAction& a) {
  const char* prefix = "";
  switch (a.type) {
    case PipelineAction::Type::kRecvForward: prefix = "recvF"; break;
    case PipelineAction::Type::kRecvBackward: prefix = "recvB"; break;
    case PipelineAction::Type::kForward: prefix = "F"; break;
    case PipelineAction::Type::kBackward: prefix = "B"; break;
    case PipelineAction::Type::kWeight: prefix = "W"; break;
  }
  return prefix + std::to_string(a.micro) + "." + std::to_string(a.chunk);
}

void pipeline_check(PipelineKind kind, int p, int m, int v) {
  const std::string m_is = "(m = global_batch / (micro_batch · dp) = " + std::to_string(m) + ")";
  const std::string micro_batches = "the micro-batches per step " + m_is;
  if (p < 1) throw Error("parallel.pp must be at least 1, got " + std::to_string(p));
  if (m < 1) throw Error(micro_batches + " must be at least 1");
  if (v < 1) throw Error("parallel.virtual_stages must be at least 1, got " + std::to_string(v));
  // With fewer micro-batches than stages the pipeline never fills: over half the step is idle,
  // and Megatron's interleaved order is defined only for whole groups of p.
  if (p > 1 && m < p)
    throw Error("pipeline parallel: " + micro_batches + " must be at least parallel.pp (" +
                std::to_string(p) + "); raise global_batch or lower micro_batch");
  const std::string kind_text =
      "parallel.pipeline_schedule " + std::string(pipeline_kind_name(kind));
  if (kind == PipelineKind::kInterleaved1F1B && v < 2)
    throw Error(kind_text + " needs parallel.virtual_stages of at least 2, got " +
                std::to_string(v) + "; use ONE_F_ONE_B for one chunk per rank");
  if (kind == PipelineKind::kInterleaved1F1B && m % p != 0)
    throw Error(kind_text + ": " + micro_batches + " must be a multiple of parallel.pp (" +
                std::to_string(p) + ")");
  if (kind == PipelineKind::kZeroBubbleV && v != 2)
    throw Error(kind_text +
                " runs two chunks per rank in a V: set parallel.virtual_stages: 2 (got " +
                std::to_string(v) + ")");
  if (kind != PipelineKind::kInterleaved1F1B && kind != PipelineKind::kZeroBubbleV && v != 1)
    throw Error("parallel.virtual_stages (" + std::to_string(v) +
                ") applies to INTERLEAVED_1F1B and ZERO_BUBBLE_V only; " + kind_text + " needs 1");
}

std::vector<PipelineAction> pipeline_compute_order(PipelineKind kind, int p, int m, int v,
                                                   int rank) {
  pipeline_check(kind, p, m, v);
  LOOM_CHECK(0 <= rank && rank < p);
  if (kind == PipelineKind::kGPipe) {
    std::vector<PipelineAction> out;
    for (int i = 0; i < m; ++i) out.push_back({Type::kForward, i, 0});
    for (int i = 0; i < m; ++i) out.push_back({Type::kBackward, i, 0});
    return out;
  }
  if (kind == PipelineKind::kOneFOneB) return one_f_one_b(p, m, 1, std::min(p - rank - 1, m));
  if (kind == PipelineKind::kZeroBubbleH1) return zero_bubble(p, m).orders[rank];
  if (kind == PipelineKind::kZeroBubbleV) return zero_bubble_v(p, m).orders[rank];
  // Megatron-LM's forward_backward_pipelining_with_interleaving; with m == p there is no steady
  // state to reach, so it runs every forward first.
  const int total = m * v;
  const int warmup = m == p ? total : std::min((p - rank - 1) * 2 + (v - 1) * p, total);
  return one_f_one_b(p, total, v, warmup);
}

std::vector<std::vector<PipelineAction>> pipeline_with_receives(
    const std::vector<std::vector<PipelineAction>>& compute_orders, int p, int v, bool v_shape) {
  LOOM_CHECK(static_cast<int>(compute_orders.size()) == p && (!v_shape || v == 2));
  const Placement at{p, v, v_shape};
  // incoming[r][a]: what rank a sends rank r, in a's compute order, as the receives r posts.
  std::vector<std::vector<std::vector<PipelineAction>>> incoming(
      p, std::vector<std::vector<PipelineAction>>(p));
  for (int a = 0; a < p; ++a)
    for (const PipelineAction& c : compute_orders[a]) {
      int dest = 0;
      PipelineAction recv{};
      if (output_of(c, at, a, &dest, &recv)) incoming[dest][a].push_back(recv);
    }
  std::vector<std::vector<PipelineAction>> out(p);
  for (int r = 0; r < p; ++r) out[r] = with_receives(compute_orders[r], incoming[r], at, r);
  return out;
}

std::vector<PipelineAction> pipeline_schedule(PipelineKind kind, int p, int m, int v, int rank) {
  LOOM_CHECK(0 <= rank && rank < p);
  return pipeline_with_receives(all_compute_orders(kind, p, m, v), p, v,
                                pipeline_v_shape(kind))[rank];
}

std::vector<PipelineAction> pipeline_forward_schedule(int p, int m, int v, int rank, bool v_shape) {
  // Any m ≥ 1 (a rank's share of the validation batches need not divide p): groups of p
  // micro-batches, each through chunk 0, 1, ... — Megatron's interleaved forward order when
  // p | m, GPipe's when v = 1. Every rank runs the same order, so none waits on a later one (in
  // a V, chunk 1's forwards wait on higher ranks only, which ran the group's chunk 0 first).
  LOOM_CHECK(p >= 1 && m >= 1 && v >= 1 && 0 <= rank && rank < p);
  std::vector<PipelineAction> order;
  for (int group = 0; group < m; group += p)
    for (int chunk = 0; chunk < v; ++chunk)
      for (int micro = group; micro < std::min(m, group + p); ++micro)
        order.push_back({Type::kForward, micro, chunk});
  return pipeline_with_receives(std::vector<std::vector<PipelineAction>>(p, order), p, v,
                                v_shape)[rank];
}

int pipeline_max_in_flight(const std::vector<PipelineAction>& actions) {
  std::set<std::pair<int, int>> live, weighed;  // weighed: backward split, freed by its W
  for (const PipelineAction& a : actions)
    if (a.type == Type::kWeight) weighed.insert({a.micro, a.chunk});
  size_t most = 0;
  for (const PipelineAction& a : actions) {
    if (a.type == Type::kForward) {
      live.insert({a.micro, a.chunk});
      most = std::max(most, live.size());
    } else if (a.type == (weighed.count({a.micro, a.chunk}) ? Type::kWeight : Type::kBackward)) {
      live.erase({a.micro, a.chunk});
    }
  }
  return static_cast<int>(most);
}

int pipeline_max_open_receives(const std::vector<PipelineAction>& actions) {
  std::multiset<Key> open;
  size_t most = 0;
  for (const PipelineAction& a : actions) {
    if (!is_compute(a)) {
      open.insert(key_of(a));
      continue;
    }
    if (a.type == Type::kWeight) continue;  // no boundary buffer
    const Type recv = a.type == Type::kForward ? Type::kRecvForward : Type::kRecvBackward;
    const auto it = open.find(key_of({recv, a.micro, a.chunk}));
    if (it != open.end()) open.erase(it);  // now the running compute's buffer, the "+ 1"
    most = std::max(most, open.size() + 1);
  }
  return static_cast<int>(most);
}

double pipeline_bubble_fraction(PipelineKind kind, int p, int m, int v) {
  pipeline_check(kind, p, m, v);
  // Each rank idles p − 1 compute slots of the step's work + p − 1; interleaving makes the slots
  // v times shorter, as if there were v·m micro-batches.
  // ZB-H1: what its own unit-time simulation leaves idle (3m units of work per stage); ZB-V:
  // what its simulation in its own time units leaves idle.
  if (kind == PipelineKind::kZeroBubbleH1) return 1.0 - 3.0 * m / zero_bubble(p, m).span;
  if (kind == PipelineKind::kZeroBubbleV)  // 2 chunks × (F + B + W) per micro-batch on each rank
    return 1.0 - 2.0 * (kVForward + kVBackward + kVWeight) * m / zero_bubble_v(p, m).span;
  const double work = kind == PipelineKind::kInterleaved1F1B ? double(v) * m : double(m);
  return (p - 1) / (work + p - 1);
}

namespace {  // the simulator

struct Channel {  // rank a → rank b; messages described as the receive b posts for them
  std::vector<PipelineAction> sent, posted;
};

struct SimRank {
  size_t pc = 0;
  std::vector<int> state;         // micro · v + chunk: 0 none, 1 F done, 2 B done, 3 W done
  std::map<Key, size_t> waiting;  // receive posted, not consumed → its index in the channel
};

struct Sim {
  int p = 0, m = 0, v = 0;
  Placement placement;
  const std::vector<std::vector<PipelineAction>>* lists = nullptr;
  std::vector<Channel> channels;  // a · p + b
  std::vector<SimRank> ranks;
};

std::string at(const Sim& s, int rank) {
  const size_t pc = s.ranks[rank].pc;
  return "rank " + std::to_string(rank) + " action #" + std::to_string(pc) + " (" +
         pipeline_action_string((*s.lists)[rank][pc]) + ")";
}

// Message i from a to b against b's i-th receive posted from a.
std::string compare(const Sim& s, int a, int b, size_t i) {
  const Channel& ch = s.channels[a * s.p + b];
  if (ch.sent[i] == ch.posted[i]) return "";
  return "message #" + std::to_string(i) + " from rank " + std::to_string(a) + " to rank " +
         std::to_string(b) + " is the input of " + pipeline_action_string(consumer_of(ch.sent[i])) +
         " but rank " + std::to_string(b) + " posted " + pipeline_action_string(ch.posted[i]) +
         " as its receive #" + std::to_string(i) + " from rank " + std::to_string(a);
}

// Rank r posts the receive it is at.
std::string post(Sim& s, int r) {
  SimRank& me = s.ranks[r];
  const PipelineAction& a = (*s.lists)[r][me.pc];
  PipelineAction needed{};
  if (!input_of(consumer_of(a), s.placement, r, &needed))
    return at(s, r) + ": " + pipeline_action_string(consumer_of(a)) + " takes no input";
  if (me.waiting.count(key_of(a))) return at(s, r) + ": posted twice";
  const int src = source_of(a, s.placement, r);
  Channel& ch = s.channels[src * s.p + r];
  me.waiting[key_of(a)] = ch.posted.size();
  ch.posted.push_back(a);
  ++me.pc;
  return ch.posted.size() <= ch.sent.size() ? compare(s, src, r, ch.posted.size() - 1) : "";
}

// Rank r runs the compute it is at, if its input has arrived (*blocked otherwise), and sends.
std::string compute(Sim& s, int r, bool* blocked) {
  SimRank& me = s.ranks[r];
  const PipelineAction& a = (*s.lists)[r][me.pc];
  int& state = me.state[a.micro * s.v + a.chunk];
  if (a.type == Type::kWeight) {  // after its B; no communication
    if (state != 2) return at(s, r) + ": W " + (state < 2 ? "before its backward" : "runs twice");
    ++state;
    ++me.pc;
    return "";
  }
  const bool forward = a.type == Type::kForward;
  if (forward && state != 0) return at(s, r) + ": forward runs twice";
  if (!forward && state != 1)
    return at(s, r) + (state == 0 ? ": backward before its forward" : ": backward runs twice");
  PipelineAction recv{};
  if (input_of(a, s.placement, r, &recv)) {
    const auto it = me.waiting.find(key_of(recv));
    if (it == me.waiting.end()) return at(s, r) + ": its input's receive was never posted";
    if (s.channels[source_of(recv, s.placement, r) * s.p + r].sent.size() <= it->second) {
      *blocked = true;  // the peer has not sent it yet
      return "";
    }
    me.waiting.erase(it);
  }
  ++state;
  ++me.pc;
  int dest = 0;
  PipelineAction out{};
  if (!output_of(a, s.placement, r, &dest, &out)) return "";
  Channel& ch = s.channels[r * s.p + dest];
  ch.sent.push_back(out);
  return ch.sent.size() <= ch.posted.size() ? compare(s, r, dest, ch.sent.size() - 1) : "";
}

std::string deadlock(const Sim& s) {
  std::string out = "deadlock:";
  for (int r = 0; r < s.p; ++r) {
    if (s.ranks[r].pc >= (*s.lists)[r].size()) continue;
    PipelineAction recv{};
    input_of((*s.lists)[r][s.ranks[r].pc], s.placement, r, &recv);
    // Appended piece by piece: GCC 12 warns (-Wrestrict) on " " + std::string temporaries here.
    out.append(" ").append(at(s, r)).append(" waits for rank ");
    out.append(std::to_string(source_of(recv, s.placement, r))).append(";");
  }
  out.pop_back();
  return out;
}

// After every list ran: every compute done, every message received.
std::string final_check(const Sim& s, bool with_backward) {
  for (int r = 0; r < s.p; ++r) {
    const bool split = std::any_of((*s.lists)[r].begin(), (*s.lists)[r].end(),
                                   [](const PipelineAction& a) { return a.type == Type::kWeight; });
    for (int i = 0; i < s.m * s.v; ++i) {
      const int state = s.ranks[r].state[i];
      const std::string what = std::to_string(i / s.v) + "." + std::to_string(i % s.v);
      if (state == 0) return "rank " + std::to_string(r) + " never ran F" + what;
      if (state == 1 && with_backward) return "rank " + std::to_string(r) + " never ran B" + what;
      if (state == 2 && split) return "rank " + std::to_string(r) + " never ran W" + what;
      if (state >= 2 && !with_backward)
        return "rank " + std::to_string(r) + " ran B" + what + " in a forward-only schedule";
    }
  }
  for (int a = 0; a < s.p; ++a)
    for (int b = 0; b < s.p; ++b) {
      const Channel& ch = s.channels[a * s.p + b];
      if (ch.sent.size() != ch.posted.size())
        return "rank " + std::to_string(a) + " sent " + std::to_string(ch.sent.size()) +
               " messages to rank " + std::to_string(b) + ", which posted " +
               std::to_string(ch.posted.size()) + " receives from it";
    }
  return "";
}

}  // namespace

std::string pipeline_simulate(const std::vector<std::vector<PipelineAction>>& per_rank, int p,
                              int m, int v, bool with_backward, bool v_shape) {
  if (p < 1 || m < 1 || v < 1 || static_cast<int>(per_rank.size()) != p)
    return "bad layout: p " + std::to_string(p) + ", m " + std::to_string(m) + ", v " +
           std::to_string(v) + ", " + std::to_string(per_rank.size()) + " lists";
  Sim s{p, m, v, {p, v, v_shape}, &per_rank, std::vector<Channel>(p * p), std::vector<SimRank>(p)};
  for (SimRank& rank : s.ranks) rank.state.assign(m * v, 0);
  for (bool finished = false; !finished;) {
    bool advanced = false;
    finished = true;
    for (int r = 0; r < p; ++r) {
      while (s.ranks[r].pc < per_rank[r].size()) {
        const PipelineAction& a = per_rank[r][s.ranks[r].pc];
        if (a.micro < 0 || a.micro >= m || a.chunk < 0 || a.chunk >= v)
          return at(s, r) + ": micro-batch or chunk out of range";
        bool blocked = false;
        const std::string problem = is_compute(a) ? compute(s, r, &blocked) : post(s, r);
        if (!problem.empty()) return problem;
        if (blocked) break;
        advanced = true;
      }
      finished = finished && s.ranks[r].pc == per_rank[r].size();
    }
    if (!finished && !advanced) return deadlock(s);
  }
  return final_check(s, with_backward);
}

std::string pipeline_simulate(PipelineKind kind, int p, int m, int v) {
  const bool v_shape = pipeline_v_shape(kind);
  return pipeline_simulate(pipeline_with_receives(all_compute_orders(kind, p, m, v), p, v, v_shape),
                           p, m, v, true, v_shape);
}

}  // namespace loom
