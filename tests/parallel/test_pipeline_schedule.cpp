// The pipeline schedules as pure data (no MPI): exact compute orders against hand-derived ones
// (Megatron's for the interleaved schedule), the receives' positions, activation and buffer
// counts, and every layout p = 2..8, m = p..4p, v = 1..3 run through the simulator — which is
// itself shown to catch mismatched receives, missing receives and deadlocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "parallel/pipeline_schedule.h"

namespace loom {
namespace {

using Type = PipelineAction::Type;
using Kind = PipelineKind;

std::string joined(const std::vector<PipelineAction>& actions, bool computes_only) {
  std::string out;
  for (const PipelineAction& a : actions) {
    if (computes_only && a.type != Type::kForward && a.type != Type::kBackward &&
        a.type != Type::kWeight)
      continue;
    if (!out.empty()) out.push_back(' ');
    out.append(pipeline_action_string(a));
  }
  return out;
}
std::string computes(const std::vector<PipelineAction>& a) { return joined(a, true); }
std::string everything(const std::vector<PipelineAction>& a) { return joined(a, false); }

// "F0 B0 F1": computes of chunk 0.
std::vector<PipelineAction> order(const std::string& text) {
  std::vector<PipelineAction> out;
  std::istringstream in(text);
  for (std::string w; in >> w;)
    out.push_back({w[0] == 'F' ? Type::kForward : Type::kBackward, std::stoi(w.substr(1)), 0});
  return out;
}

struct Layout {
  Kind kind;
  int p, m, v;
};

// p = 2..8, m = p..4p; v = 1 for GPipe and 1F1B, v = 2, 3 interleaved with m % p == 0.
std::vector<Layout> sweep() {
  std::vector<Layout> out;
  for (int p = 2; p <= 8; ++p)
    for (int m = p; m <= 4 * p; ++m) {
      out.push_back({Kind::kGPipe, p, m, 1});
      out.push_back({Kind::kOneFOneB, p, m, 1});
      if (m % p == 0)
        for (int v = 2; v <= 3; ++v) out.push_back({Kind::kInterleaved1F1B, p, m, v});
    }
  return out;
}

std::string describe(const Layout& l) {
  return std::string(pipeline_kind_name(l.kind)) + " p " + std::to_string(l.p) + " m " +
         std::to_string(l.m) + " v " + std::to_string(l.v);
}

// Megatron's activation bound: warm-up forwards + the steady state's one.
int expected_in_flight(const Layout& l, int rank) {
  if (l.kind == Kind::kGPipe) return l.m;
  if (l.kind == Kind::kOneFOneB) return std::min(l.p - rank, l.m);
  const int total = l.m * l.v;
  const int warmup = l.m == l.p ? total : (l.p - rank - 1) * 2 + (l.v - 1) * l.p;
  return std::min(warmup + 1, total);
}

// Whether compute `c` on `rank` consumes a receive (not stage 0's forward, not the loss stage's
// backward).
bool takes_input(const PipelineAction& c, const Layout& l, int rank) {
  const int g = c.chunk * l.p + rank;
  return c.type == Type::kForward ? g > 0 : g < l.p * l.v - 1;
}

// Every compute's receive comes before the compute preceding it (one ahead). Returns how many
// were posted earlier than that rule alone would post them (for the peer's send order).
int expect_one_ahead(const std::vector<PipelineAction>& actions, const Layout& l, int rank) {
  std::vector<size_t> at;  // positions of the computes
  std::map<std::tuple<int, int, int>, size_t> recv_at;
  for (size_t i = 0; i < actions.size(); ++i) {
    const PipelineAction& a = actions[i];
    if (a.type == Type::kForward || a.type == Type::kBackward)
      at.push_back(i);
    else
      recv_at[{a.type == Type::kRecvForward ? 0 : 1, a.micro, a.chunk}] = i;
  }
  int early = 0;
  for (size_t j = 0; j < at.size(); ++j) {
    const PipelineAction& c = actions[at[j]];
    const auto it = recv_at.find({c.type == Type::kForward ? 0 : 1, c.micro, c.chunk});
    EXPECT_EQ(it != recv_at.end(), takes_input(c, l, rank)) << pipeline_action_string(c);
    if (it == recv_at.end()) continue;
    EXPECT_LT(it->second, at[j == 0 ? 0 : j - 1]) << pipeline_action_string(c) << " rank " << rank;
    if (j >= 2 && it->second < at[j - 2]) ++early;
  }
  return early;
}

// Each (micro, chunk) runs forward then backward exactly once.
void expect_forward_then_backward(const std::vector<PipelineAction>& actions, const Layout& l) {
  std::vector<int> state(l.m * l.v, 0);
  for (const PipelineAction& a : actions) {
    if (a.type == Type::kForward) {
      EXPECT_EQ(state[a.micro * l.v + a.chunk]++, 0);
    } else if (a.type == Type::kBackward) {
      EXPECT_EQ(state[a.micro * l.v + a.chunk]++, 1);
    }
  }
  for (int s : state) EXPECT_EQ(s, 2);
}

TEST(PipelineSchedule, EveryLayoutRunsCorrectlyOnEveryRank) {
  int early_posts = 0;
  for (const Layout& l : sweep()) {
    SCOPED_TRACE(describe(l));
    EXPECT_EQ(pipeline_simulate(l.kind, l.p, l.m, l.v), "");
    for (int rank = 0; rank < l.p; ++rank) {
      const std::vector<PipelineAction> actions = pipeline_schedule(l.kind, l.p, l.m, l.v, rank);
      expect_forward_then_backward(actions, l);
      EXPECT_EQ(pipeline_max_in_flight(actions), expected_in_flight(l, rank)) << "rank " << rank;
      early_posts += expect_one_ahead(actions, l, rank);
      // One-ahead posting alone keeps at most the next compute's receive open beside the
      // running one's; no layout needed an earlier post to respect a peer's send order.
      EXPECT_LE(pipeline_max_open_receives(actions), 2) << "rank " << rank;
    }
  }
  EXPECT_EQ(early_posts, 0);
}

TEST(PipelineSchedule, OneFOneBOrder) {
  EXPECT_EQ(computes(pipeline_schedule(Kind::kOneFOneB, 4, 8, 1, 0)),
            "F0.0 F1.0 F2.0 F3.0 B0.0 F4.0 B1.0 F5.0 B2.0 F6.0 B3.0 F7.0 B4.0 B5.0 B6.0 B7.0");
  EXPECT_EQ(computes(pipeline_schedule(Kind::kOneFOneB, 4, 8, 1, 3)),
            "F0.0 B0.0 F1.0 B1.0 F2.0 B2.0 F3.0 B3.0 F4.0 B4.0 F5.0 B5.0 F6.0 B6.0 F7.0 B7.0");
}

TEST(PipelineSchedule, GPipeOrderKeepsMicroBatchOrderInBackward) {
  EXPECT_EQ(computes(pipeline_schedule(Kind::kGPipe, 2, 3, 1, 0)), "F0.0 F1.0 F2.0 B0.0 B1.0 B2.0");
}

// Megatron, p = 2, m = 4, v = 2: forward k runs chunk (k % 4) / 2 of micro-batch
// (k / 4)·2 + k % 2, backward k chunk 1 − (k % 4) / 2; rank 0 warms up with (2 − 0 − 1)·2 +
// (2 − 1)·2 = 4 forwards, rank 1 with 2; then F,B pairs, then the remaining backwards.
TEST(PipelineSchedule, InterleavedOrderIsMegatrons) {
  EXPECT_EQ(computes(pipeline_schedule(Kind::kInterleaved1F1B, 2, 4, 2, 0)),
            "F0.0 F1.0 F0.1 F1.1 "
            "F2.0 B0.1 F3.0 B1.1 F2.1 B0.0 F3.1 B1.0 "
            "B2.1 B3.1 B2.0 B3.0");
  EXPECT_EQ(computes(pipeline_schedule(Kind::kInterleaved1F1B, 2, 4, 2, 1)),
            "F0.0 F1.0 "
            "F0.1 B0.1 F1.1 B1.1 F2.0 B0.0 F3.0 B1.0 F2.1 B2.1 F3.1 B3.1 "
            "B2.0 B3.0");
  // m == p: Megatron runs every forward first.
  EXPECT_EQ(computes(pipeline_schedule(Kind::kInterleaved1F1B, 2, 2, 2, 1)),
            "F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0");
}

TEST(PipelineSchedule, ReceivesArePostedOneComputeAhead) {
  // Rank 1 (the loss stage) receives forwards; rank 0 receives gradients.
  EXPECT_EQ(everything(pipeline_schedule(Kind::kOneFOneB, 2, 2, 1, 1)),
            "recvF0.0 F0.0 recvF1.0 B0.0 F1.0 B1.0");
  EXPECT_EQ(everything(pipeline_schedule(Kind::kOneFOneB, 2, 2, 1, 0)),
            "F0.0 recvB0.0 F1.0 recvB1.0 B0.0 B1.0");
  // Interleaved p = 2: rank 1 gets forwards and gradients from rank 0 on one channel, posted in
  // rank 0's compute order; the first compute's receive and the second's come before it.
  EXPECT_EQ(everything(pipeline_schedule(Kind::kInterleaved1F1B, 2, 2, 2, 1)),
            "recvF0.0 recvF1.0 F0.0 recvF0.1 F1.0 recvF1.1 F0.1 F1.1 B0.1 recvB0.0 B1.1 "
            "recvB1.0 B0.0 B1.0");
}

// When a rank consumes a peer's messages out of the peer's send order, the receives still go in
// send order: the one for F1 is posted with F2's, ahead of the one-compute look-ahead.
TEST(PipelineSchedule, ReceivesFollowThePeersSendOrder) {
  const std::vector<std::vector<PipelineAction>> orders = {order("F0 F1 F2 B0 B1 B2"),
                                                           order("F0 B0 F2 B2 F1 B1")};
  const std::vector<std::vector<PipelineAction>> lists = pipeline_with_receives(orders, 2, 1);
  EXPECT_EQ(everything(lists[0]), "F0.0 F1.0 recvB0.0 F2.0 recvB2.0 recvB1.0 B0.0 B1.0 B2.0");
  EXPECT_EQ(everything(lists[1]), "recvF0.0 F0.0 recvF1.0 recvF2.0 B0.0 F2.0 B2.0 F1.0 B1.0");
  EXPECT_EQ(pipeline_simulate(lists, 2, 3, 1), "");
  EXPECT_EQ(pipeline_max_open_receives(lists[1]), 3);  // recvF1 waits through F2
}

TEST(PipelineSchedule, BufferCounts) {
  const std::vector<PipelineAction> last = pipeline_schedule(Kind::kOneFOneB, 2, 2, 1, 1);
  const std::vector<PipelineAction> first = pipeline_schedule(Kind::kOneFOneB, 2, 2, 1, 0);
  EXPECT_EQ(pipeline_max_in_flight(last), 1);
  EXPECT_EQ(pipeline_max_in_flight(first), 2);
  EXPECT_EQ(pipeline_max_open_receives(last), 2);  // recvF1 open while B0 runs
  EXPECT_EQ(pipeline_max_open_receives(first), 2);
  EXPECT_EQ(pipeline_max_open_receives({{Type::kForward, 0, 0}}), 1);
  EXPECT_EQ(pipeline_max_in_flight(pipeline_schedule(Kind::kGPipe, 4, 8, 1, 2)), 8);
}

TEST(PipelineSchedule, SingleRankNeedsNoReceives) {
  EXPECT_EQ(everything(pipeline_schedule(Kind::kOneFOneB, 1, 3, 1, 0)),
            "F0.0 B0.0 F1.0 B1.0 F2.0 B2.0");
  EXPECT_EQ(everything(pipeline_schedule(Kind::kGPipe, 1, 3, 1, 0)),
            "F0.0 F1.0 F2.0 B0.0 B1.0 B2.0");
  EXPECT_EQ(everything(pipeline_forward_schedule(1, 2, 1, 0)), "F0.0 F1.0");
  EXPECT_EQ(pipeline_simulate(Kind::kOneFOneB, 1, 1, 1), "");
  EXPECT_EQ(pipeline_simulate(Kind::kGPipe, 1, 5, 1), "");
}

TEST(PipelineSchedule, ForwardOnlySchedules) {
  for (const Layout& l : sweep()) {
    if (l.kind == Kind::kGPipe) continue;  // the same forward-only lists as 1F1B
    SCOPED_TRACE(describe(l));
    std::vector<std::vector<PipelineAction>> lists;
    for (int rank = 0; rank < l.p; ++rank) {
      lists.push_back(pipeline_forward_schedule(l.p, l.m, l.v, rank));
      EXPECT_EQ(computes(lists.back()).find('B'), std::string::npos);
    }
    EXPECT_EQ(pipeline_simulate(lists, l.p, l.m, l.v, false), "");
    EXPECT_NE(pipeline_simulate(lists, l.p, l.m, l.v), "");  // backward expected, never ran
  }
  // v = 1: GPipe's forwards with their receives, less the gradients'.
  std::vector<PipelineAction> gpipe = pipeline_schedule(Kind::kGPipe, 3, 4, 1, 1);
  std::erase_if(gpipe, [](const PipelineAction& a) {
    return a.type == Type::kBackward || a.type == Type::kRecvBackward;
  });
  EXPECT_EQ(everything(pipeline_forward_schedule(3, 4, 1, 1)), everything(gpipe));
  EXPECT_EQ(everything(gpipe), "recvF0.0 recvF1.0 F0.0 recvF2.0 F1.0 recvF3.0 F2.0 F3.0");
  // Evaluation gives a rank any number of micro-batches, fewer than p or not a multiple of it.
  for (int p = 2; p <= 5; ++p)
    for (int v = 1; v <= 3; ++v)
      for (int m = 1; m <= 2 * p + 1; ++m) {
        std::vector<std::vector<PipelineAction>> lists;
        for (int rank = 0; rank < p; ++rank) lists.push_back(pipeline_forward_schedule(p, m, v, rank));
        EXPECT_EQ(pipeline_simulate(lists, p, m, v, false), "") << p << " " << m << " " << v;
        EXPECT_LE(pipeline_max_open_receives(lists.back()), 3);
      }
}

TEST(PipelineSchedule, BubbleFractions) {
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(Kind::kGPipe, 4, 8, 1), 3.0 / 11);
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(Kind::kOneFOneB, 4, 8, 1), 3.0 / 11);
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(Kind::kInterleaved1F1B, 4, 8, 2), 3.0 / 19);
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(Kind::kOneFOneB, 1, 8, 1), 0.0);
}

std::string check_message(Kind kind, int p, int m, int v) {
  try {
    pipeline_check(kind, p, m, v);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PipelineSchedule, CheckRejectsLayoutsNamingTheNumbers) {
  std::string e = check_message(Kind::kOneFOneB, 4, 3, 1);
  EXPECT_NE(e.find("m = global_batch / (micro_batch · dp) = 3"), std::string::npos) << e;
  EXPECT_NE(e.find("parallel.pp (4)"), std::string::npos) << e;
  e = check_message(Kind::kInterleaved1F1B, 4, 8, 1);
  EXPECT_NE(e.find("parallel.virtual_stages"), std::string::npos) << e;
  EXPECT_NE(e.find("got 1"), std::string::npos) << e;
  e = check_message(Kind::kInterleaved1F1B, 4, 6, 2);
  EXPECT_NE(e.find("= 6)"), std::string::npos) << e;
  EXPECT_NE(e.find("multiple of parallel.pp (4)"), std::string::npos) << e;
  e = check_message(Kind::kGPipe, 2, 4, 3);
  EXPECT_NE(
      e.find("parallel.virtual_stages (3) applies to INTERLEAVED_1F1B and ZERO_BUBBLE_V only"),
      std::string::npos)
      << e;
  EXPECT_NE(check_message(Kind::kOneFOneB, 0, 4, 1).find("parallel.pp must be at least 1, got 0"),
            std::string::npos);
  EXPECT_NE(check_message(Kind::kOneFOneB, 1, 0, 1).find("= 0)"), std::string::npos);
  EXPECT_NE(check_message(Kind::kOneFOneB, 1, 1, 0).find("got 0"), std::string::npos);
  EXPECT_EQ(check_message(Kind::kOneFOneB, 1, 1, 1), "");
  EXPECT_EQ(check_message(Kind::kInterleaved1F1B, 4, 8, 3), "");
  EXPECT_THROW(pipeline_schedule(Kind::kOneFOneB, 4, 2, 1, 0), Error);
}

std::vector<std::vector<PipelineAction>> all_ranks(Kind kind, int p, int m, int v) {
  std::vector<std::vector<PipelineAction>> out;
  for (int rank = 0; rank < p; ++rank) out.push_back(pipeline_schedule(kind, p, m, v, rank));
  return out;
}

size_t index_of(const std::vector<PipelineAction>& actions, const PipelineAction& a) {
  return std::find(actions.begin(), actions.end(), a) - actions.begin();
}

TEST(PipelineSchedule, SimulatorReportsSwappedReceives) {
  // Rank 1 of interleaved p = 2 posts a gradient before a forward that rank 0 sends first.
  std::vector<std::vector<PipelineAction>> lists = all_ranks(Kind::kInterleaved1F1B, 2, 4, 2);
  ASSERT_EQ(pipeline_simulate(lists, 2, 4, 2), "");
  std::vector<PipelineAction>& r1 = lists[1];
  const size_t fwd = index_of(r1, {Type::kRecvForward, 3, 0});
  const size_t grad = index_of(r1, {Type::kRecvBackward, 1, 0});
  ASSERT_LT(fwd, grad);
  ASSERT_LT(grad, r1.size());
  std::swap(r1[fwd], r1[grad]);
  const std::string problem = pipeline_simulate(lists, 2, 4, 2);
  EXPECT_NE(problem.find("from rank 0 to rank 1 is the input of F3.0"), std::string::npos)
      << problem;
  EXPECT_NE(problem.find("posted recvB1.0"), std::string::npos) << problem;
}

TEST(PipelineSchedule, SimulatorReportsMissingAndMisplacedActions) {
  std::vector<std::vector<PipelineAction>> lists = all_ranks(Kind::kOneFOneB, 3, 3, 1);
  std::vector<std::vector<PipelineAction>> missing = lists;
  missing[2].erase(missing[2].begin() + index_of(missing[2], {Type::kRecvForward, 1, 0}));
  EXPECT_NE(pipeline_simulate(missing, 3, 3, 1).find("rank 2 action #"), std::string::npos);
  EXPECT_NE(pipeline_simulate(missing, 3, 3, 1).find("receive was never posted"),
            std::string::npos);
  std::vector<std::vector<PipelineAction>> backward_first = lists;
  std::vector<PipelineAction>& r2 = backward_first[2];
  std::swap(r2[index_of(r2, {Type::kForward, 0, 0})], r2[index_of(r2, {Type::kBackward, 0, 0})]);
  EXPECT_NE(pipeline_simulate(backward_first, 3, 3, 1).find("backward before its forward"),
            std::string::npos);
  std::vector<std::vector<PipelineAction>> dropped = lists;
  dropped[0].pop_back();  // rank 0's last backward never runs
  EXPECT_EQ(pipeline_simulate(dropped, 3, 3, 1), "rank 0 never ran B2.0");
}

TEST(PipelineSchedule, SimulatorReportsDeadlock) {
  // Rank 0 waits for micro-batch 0's gradient before sending micro-batch 1's forward, which the
  // loss stage wants first: both wait.
  const std::vector<std::vector<PipelineAction>> orders = {order("F0 B0 F1 B1"),
                                                           order("F1 F0 B0 B1")};
  const std::string problem = pipeline_simulate(pipeline_with_receives(orders, 2, 1), 2, 2, 1);
  EXPECT_EQ(problem.rfind("deadlock:", 0), 0u) << problem;
  EXPECT_NE(problem.find("rank 0 action #2 (B0.0) waits for rank 1"), std::string::npos) << problem;
  EXPECT_NE(problem.find("(F1.0) waits for rank 0"), std::string::npos) << problem;
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// F, then B, then W exactly once for every (micro-batch, chunk) of m × v.
void expect_forward_backward_weight(const std::vector<PipelineAction>& actions, int m, int v) {
  std::vector<int> state(m * v, 0);
  for (const PipelineAction& a : actions) {
    const int expected = a.type == Type::kForward    ? 0
                         : a.type == Type::kBackward ? 1
                         : a.type == Type::kWeight   ? 2
                                                     : -1;
    if (expected >= 0) {
      EXPECT_EQ(state[v * a.micro + a.chunk]++, expected) << pipeline_action_string(a);
    }
  }
  for (int s : state) EXPECT_EQ(s, 3);
}

// Zero-bubble H1: F, then B, then W for every micro-batch on every stage, 1F1B's activations in
// flight at most, a deadlock-free exchange, and less idle time than 1F1B by its own measure.
TEST(PipelineSchedule, ZeroBubbleH1) {
  for (int p = 2; p <= 8; ++p)
    for (int m = p; m <= 4 * p; ++m) {
      SCOPED_TRACE("p " + std::to_string(p) + " m " + std::to_string(m));
      EXPECT_EQ(pipeline_simulate(Kind::kZeroBubbleH1, p, m, 1), "");
      for (int rank = 0; rank < p; ++rank) {
        const std::vector<PipelineAction> actions =
            pipeline_schedule(Kind::kZeroBubbleH1, p, m, 1, rank);
        expect_forward_backward_weight(actions, m, 1);
        EXPECT_LE(pipeline_max_in_flight(actions), p - rank);
        EXPECT_LE(pipeline_max_open_receives(actions), 2);
      }
      EXPECT_LT(pipeline_bubble_fraction(Kind::kZeroBubbleH1, p, m, 1),
                pipeline_bubble_fraction(Kind::kOneFOneB, p, m, 1));
    }
  // p = 2, m = 4 by hand (one unit each): stage 1 starts its F1 only once W0 freed its slot.
  EXPECT_EQ(computes(pipeline_schedule(Kind::kZeroBubbleH1, 2, 4, 1, 0)),
            "F0.0 F1.0 B0.0 W0.0 F2.0 B1.0 W1.0 F3.0 B2.0 W2.0 B3.0 W3.0");
  EXPECT_EQ(computes(pipeline_schedule(Kind::kZeroBubbleH1, 2, 4, 1, 1)),
            "F0.0 B0.0 W0.0 F1.0 B1.0 W1.0 F2.0 B2.0 W2.0 F3.0 B3.0 W3.0");
  // 14 units for 12 of work on each stage.
  EXPECT_DOUBLE_EQ(pipeline_bubble_fraction(Kind::kZeroBubbleH1, 2, 4, 1), 2.0 / 14);
  // A W before its B, and a missing W, are caught.
  std::vector<std::vector<PipelineAction>> lists;
  for (int r = 0; r < 2; ++r) lists.push_back(pipeline_schedule(Kind::kZeroBubbleH1, 2, 4, 1, r));
  auto swapped = lists;
  auto& l1 = swapped[1];
  std::iter_swap(std::find(l1.begin(), l1.end(), PipelineAction{Type::kBackward, 0, 0}),
                 std::find(l1.begin(), l1.end(), PipelineAction{Type::kWeight, 0, 0}));
  EXPECT_NE(pipeline_simulate(swapped, 2, 4, 1).find("W before its backward"), std::string::npos);
  auto dropped = lists;
  std::erase(dropped[0], PipelineAction{Type::kWeight, 3, 0});
  EXPECT_NE(pipeline_simulate(dropped, 2, 4, 1).find("never ran W3.0"), std::string::npos);
  EXPECT_THROW(pipeline_check(Kind::kZeroBubbleH1, 2, 4, 2), Error);
}

// Zero-bubble V: rank r runs pieces r and 2p − 1 − r; F, B, W once per (micro-batch, chunk); at
// most 2p chunks' activations on every rank (1F1B's first stage's in half-stage chunks); the
// turn on rank p − 1 sends to itself; and less idle time than 1F1B.
TEST(PipelineSchedule, ZeroBubbleV) {
  for (int p = 2; p <= 8; ++p)
    for (int m = p; m <= 4 * p; ++m) {
      SCOPED_TRACE("p " + std::to_string(p) + " m " + std::to_string(m));
      EXPECT_EQ(pipeline_simulate(Kind::kZeroBubbleV, p, m, 2), "");
      for (int rank = 0; rank < p; ++rank) {
        const std::vector<PipelineAction> actions =
            pipeline_schedule(Kind::kZeroBubbleV, p, m, 2, rank);
        expect_forward_backward_weight(actions, m, 2);
        EXPECT_LE(pipeline_max_in_flight(actions), 2 * p);
      }
      // 1F1B's idle fraction does not depend on the passes' costs; ZB-V's is in its units.
      EXPECT_LT(pipeline_bubble_fraction(Kind::kZeroBubbleV, p, m, 2),
                pipeline_bubble_fraction(Kind::kOneFOneB, p, m, 1));
    }
  // p = 2, m = 4 by hand (F, B, W of 5, 6, 4 units): rank 1 turns F0.0 into F0.1 at once, with
  // no transfer.
  EXPECT_EQ(computes(pipeline_schedule(Kind::kZeroBubbleV, 2, 4, 2, 1)),
            "F0.0 F0.1 F1.0 F1.1 B0.1 B0.0 W0.1 B1.1 B1.0 F2.0 W0.0 F2.1 W1.1 F3.0 W1.0 B2.1 B2.0 "
            "F3.1 W2.1 W2.0 B3.1 B3.0 W3.1 W3.0");
  // Its receive from itself is posted one compute ahead, as any other.
  EXPECT_EQ(everything(pipeline_schedule(Kind::kZeroBubbleV, 2, 2, 2, 1)).substr(0, 22),
            "recvF0.0 recvF0.1 F0.0");
  // 132 units for 120 of work on each rank.
  EXPECT_NEAR(pipeline_bubble_fraction(Kind::kZeroBubbleV, 2, 4, 2), 12.0 / 132, 1e-12);
  // Forward-only (evaluation) in a V runs too, for any m.
  for (int m = 1; m <= 5; ++m) {
    std::vector<std::vector<PipelineAction>> lists;
    for (int rank = 0; rank < 3; ++rank)
      lists.push_back(pipeline_forward_schedule(3, m, 2, rank, true));
    EXPECT_EQ(pipeline_simulate(lists, 3, m, 2, false, true), "") << m;
  }
  // Interleaved placement's lists do not run as a V.
  std::vector<std::vector<PipelineAction>> interleaved;
  for (int rank = 0; rank < 2; ++rank)
    interleaved.push_back(pipeline_schedule(Kind::kInterleaved1F1B, 2, 4, 2, rank));
  EXPECT_NE(pipeline_simulate(interleaved, 2, 4, 2, true, true), "");
  EXPECT_THROW(pipeline_check(Kind::kZeroBubbleV, 2, 4, 1), Error);
  EXPECT_THROW(pipeline_check(Kind::kZeroBubbleV, 2, 4, 3), Error);
}

}  // namespace
}  // namespace loom
