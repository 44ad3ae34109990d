// Pipeline-parallel schedules as data: the ordered list of receives and computes each pipeline
// rank runs in one optimizer step (GPipe, 1F1B, Megatron's interleaved 1F1B, zero-bubble H1 and V
// with backward split into its input- and weight-gradient passes), plus a simulator
// that runs every rank's list against the others, so schedules are tested without MPI.
//
// p ranks, m micro-batches per step, v model chunks per rank. Global stage g = chunk · p + rank
// (Megatron's interleaved assignment), or with ZERO_BUBBLE_V a V: rank r holds stages r and
// 2p − 1 − r (its chunks 0 and 1); stage g sends its forward output to g + 1 and its input
// gradient to g − 1, which at the V's turn (stages p − 1 and p) is the same rank. Sends are not
// actions: the executor issues each right after its compute. Sends and receives between two ranks
// match in the order they are issued (no tags), so a rank posts its receives from a peer in that
// peer's send order. Receives are posted one compute ahead: before compute k runs, those of
// computes k and k + 1 are posted, so a transfer hides behind the compute before its consumer.
//
//   loom::pipeline_check(loom::PipelineKind::kOneFOneB, pp, m, 1);   // loom::Error if it can't run
//   for (const loom::PipelineAction& a : loom::pipeline_schedule(kind, pp, m, 1, pp_rank))
//     execute(a);   // kRecv*: post the irecv; kForward / kBackward: wait for its input, run, send
#pragma once
#include <string>
#include <vector>

namespace loom {

// The order matches configs/loom.proto's ParallelConfig.PipelineSchedule.
enum class PipelineKind { kGPipe, kOneFOneB, kInterleaved1F1B, kZeroBubbleH1, kZeroBubbleV };

struct PipelineAction {
  // kBackward: the whole backward, or with a zero-bubble kind its input-gradient part, whose weight
  // gradients a later kWeight of the same micro-batch and chunk computes.
  enum class Type { kRecvForward, kRecvBackward, kForward, kBackward, kWeight };
  Type type;
  int micro = 0;  // 0 .. m − 1
  int chunk = 0;  // this rank's chunk 0 .. v − 1 (a receive names the chunk that consumes it)
  bool operator==(const PipelineAction&) const = default;
};

// The config name: "GPIPE", "ONE_F_ONE_B", "INTERLEAVED_1F1B", "ZERO_BUBBLE_H1", "ZERO_BUBBLE_V".
const char* pipeline_kind_name(PipelineKind kind);
// For people: "GPipe", "1F1B", "interleaved 1F1B", "zero-bubble H1", "zero-bubble V".
const char* pipeline_kind_title(PipelineKind kind);
// E.g. "F3.1" (forward of micro-batch 3, chunk 1), "B0.0", "W0.0", "recvF3.1", "recvB0.0".
std::string pipeline_action_string(const PipelineAction& action);

// Throws loom::Error naming the fields and numbers when the layout can't run: p, m, v ≥ 1;
// m ≥ p when p > 1; INTERLEAVED_1F1B needs v ≥ 2 and m % p == 0; ZERO_BUBBLE_V v == 2; the
// other kinds v == 1.
//
// ZERO_BUBBLE_H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): backward is split into
// B (input gradients: on the critical path between stages) and W (weight gradients: needed by
// nobody until the step ends), and W fills the time a stage would wait. The order comes from
// simulating every stage at once with F = B = W = one unit of time and ZB-H1's rules: a stage
// runs a B whose gradient has arrived; else an F whose input has arrived while fewer than p − r
// micro-batches are in flight on stage r (1F1B's activation memory; a micro-batch stays in flight
// until its W); else its oldest pending W.
//
// ZERO_BUBBLE_V (the same paper's ZB-V): two chunks per rank in a V, so the first and last stage
// share rank 0 and every rank's peak activation memory is 1F1B's first stage's (2p half-stage
// chunks). The order comes from a simulation over the 2p stages with the same rules (B before F
// before W; chunk 0's B and chunk 1's F first) in time units where F, B and W take 5, 6 and 4:
// a layer's input-gradient pass also runs attention's backward, its weight pass neither
// attention nor the norms. An order built for F = B = W loses most of its advantage when W is
// shorter (measured on a CPU: B ≈ 1.17 F, W ≈ 0.76 F); this one keeps it.
void pipeline_check(PipelineKind kind, int p, int m, int v);

// The computes of `rank` alone, in order (no receives).
std::vector<PipelineAction> pipeline_compute_order(PipelineKind kind, int p, int m, int v,
                                                   int rank);
// Every rank's list: compute_orders[r] (computes only) with its receives inserted by the
// one-ahead, peer-send-order rule. Public so that tests can build deliberately bad schedules.
std::vector<std::vector<PipelineAction>> pipeline_with_receives(
    const std::vector<std::vector<PipelineAction>>& compute_orders, int p, int v,
    bool v_shape = false);
// Whether `kind` places its chunks in a V (ZERO_BUBBLE_V).
bool pipeline_v_shape(PipelineKind kind);
// The global stage that chunk `chunk` of rank `rank` runs, of p · v: chunk · p + rank, or in a V
// (v = 2) rank for chunk 0 and 2p − 1 − rank for chunk 1; and the rank that runs stage g.
int pipeline_stage_of(int p, bool v_shape, int rank, int chunk);
int pipeline_rank_of(int p, bool v_shape, int g);

// The ordered action list of `rank` for one training step.
std::vector<PipelineAction> pipeline_schedule(PipelineKind kind, int p, int m, int v, int rank);
// Evaluation: forwards only, in GPipe's order (Megatron's interleaved forward order when v > 1),
// with their receives; any m ≥ 1.
std::vector<PipelineAction> pipeline_forward_schedule(int p, int m, int v, int rank,
                                                      bool v_shape = false);

// Activation slots needed: the most (micro, chunk) whose forward is done and backward (its W,
// when there is one) is not.
int pipeline_max_in_flight(const std::vector<PipelineAction>& actions);
// Receive buffers needed: the most receives posted and not yet consumed by their compute while a
// compute runs, plus 1 for the buffer that compute works in.
int pipeline_max_open_receives(const std::vector<PipelineAction>& actions);
// Theory: the idle fraction of a step, (p − 1) / (m + p − 1); interleaved (p − 1) / (v·m + p − 1);
// ZB-H1 what its unit-time simulation leaves idle (F = B = W; 1F1B's is then the formula above),
// ZB-V what its simulation leaves idle in its own units (F : B : W = 5 : 6 : 4).
double pipeline_bubble_fraction(PipelineKind kind, int p, int m, int v);

// Runs all p ranks' lists: a receive only posts; a compute waits until the peer sent its input;
// sends never block. Returns "" when every (micro, chunk) ran forward then backward exactly once
// on every rank (forward only when with_backward is false; and then its W when the lists split
// backward), the sends between each ordered pair
// of ranks matched the receives posted in order, and nothing deadlocked; else the first problem.
std::string pipeline_simulate(PipelineKind kind, int p, int m, int v);
std::string pipeline_simulate(const std::vector<std::vector<PipelineAction>>& per_rank, int p,
                              int m, int v, bool with_backward = true, bool v_shape = false);

}  // namespace loom
