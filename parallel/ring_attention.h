// Ring sequence parallelism (Ring Self-Attention, arXiv 2105.13120; docs/architecture.md,
// "Sequence parallelism"): each sequence of T tokens is cut over the sp ranks of a group, and
// causal attention over the whole sequence is computed without any rank holding all of it.
//
// Layout. ZIGZAG cuts a sequence into 2·sp chunks and rank r holds chunks r and 2·sp − 1 − r,
// so under the causal mask every rank does the same work at every ring step; CONTIGUOUS (rank r
// holds chunk r of sp) is kept only to measure the imbalance it causes. A rank's local rows are
// its chunks in order; `sequence_pieces` says where each starts in the global sequence.
//
// Forward. Keys and values (packed into a (B, Tl, 2·Ckv) block: with grouped-query attention
// only the kv heads travel) go around the ring: at step j
// rank r attends to rank (r − j)'s block while the next block's transfer runs (double-buffered,
// async send/recv). Each (query piece, key piece) pair is skipped when masked, run as a full or a
// causal block otherwise, and merged into the output through its log-sum-exp in fp32.
// Backward. The key/value blocks rotate again; every block's backward uses the merged (global)
// output and log-sum-exp, so the sum of the blocks' gradients is exact. A second ring carries
// each block's dK/dV accumulator along with it, one hop behind, and home at the end; each rank
// computes its share into a fresh buffer while the accumulator arrives, so that transfer also
// hides behind compute.
//
// Collective over the sp group (two or more ranks): every rank calls forward and backward with
// the same shapes, in the same order. Buffers are the caller's (RingWorkspace, sized by
// ring_workspace_activations and ring_workspace_lse_floats); activations are fp32 in host
// memory (the MPI communicator). A failed transfer throws CommError naming the pass, the step
// and the peer; the other transfers of the call may still be in flight, so the caller ends the
// job (as train_worker does) rather than reuse the group or the buffers.
//
//   loom::RingAttention ring(&sp_comm, loom::SequenceLayout::kZigzag);
//   loom::ring_attention_forward(ring, be, ws, out, lse, qkv, B, Tl, C, H, kv_heads);
//   loom::ring_attention_backward(ring, be, ws, dqkv, dout, qkv, out, lse, B, Tl, C, H, kv_heads);
#pragma once
#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace loom {

enum class SequenceLayout { kZigzag, kContiguous };

// Rows [row, row + rows) of a rank's local sequence are global positions [position, +rows).
struct SequencePiece {
  int row = 0, rows = 0, position = 0;
};

// At most N values in place: what the ring computes per step allocates nothing.
template <typename Value, int N>
struct FixedList {
  std::array<Value, N> values{};
  int count = 0;
  void push_back(const Value& v) { values[count++] = v; }
  int size() const { return count; }
  const Value& operator[](int i) const { return values[i]; }
  const Value* begin() const { return values.data(); }
  const Value* end() const { return values.data() + count; }
};
using SequencePieces = FixedList<SequencePiece, 2>;

// The pieces of rank `rank`'s local rows for global sequences of T tokens over sp ranks: two
// chunks of T / (2·sp) (zigzag) or one of T / sp (contiguous). T must divide accordingly.
SequencePieces sequence_pieces(SequenceLayout layout, int T, int sp, int rank);
// The global position of each of the rank's T / sp local rows.
std::vector<int> sequence_positions(SequenceLayout layout, int T, int sp, int rank);
// local (B, Tl) ← the columns `positions` (Tl of them, from sequence_positions) of global (B, T),
// e.g. of token ids.
void sequence_select(const std::vector<int>& positions, const int* global, int* local, int B,
                     int T);

// One rank's ring: its sp group (size > 1), the layout, and time counters the caller resets.
struct RingAttention {
  using Clock = std::chrono::steady_clock;
  RingAttention() = default;
  RingAttention(Communicator* comm, SequenceLayout layout) : comm(comm), layout(layout) {}
  Communicator* comm = nullptr;  // the sp group; not owned
  SequenceLayout layout = SequenceLayout::kZigzag;
  double compute_seconds = 0;  // in the block kernels and merges
  double wait_seconds = 0;     // blocked on ring transfers (exposed communication)
  // Optional: told of every wait that blocked for more than 20 µs (a timeline's "sp wait").
  std::function<void(Clock::time_point start, Clock::time_point end)> on_blocked;
};

// Buffers of one rank, in the backend's memory (activations unless noted), for micro-batches of
// up to B × Tl local tokens, Cl = this rank's query width and Ckv its key (or value) width.
// Each of kv and dkv is a slot of ring_slot_activations elements.
struct RingWorkspace {
  void* kv[2] = {};   // (B, Tl, 2·Ckv) key/value blocks: the one attended, the one arriving
  void* dkv[3] = {};  // (B, Tl, 2·Ckv) dK/dV: computed into, arriving, leaving
  void* block_out = nullptr;   // (B, Tl, Cl) one block's output (forward; may alias dkv[0])
  float* block_lse = nullptr;  // (B, Hl, Tl) fp32
  void* scratch = nullptr;     // attention_block_scratch_bytes(B, Hl, Tl, Tl) bytes
};

// Activation elements of one workspace slot (a key/value block, or block_out), of kv + dkv
// (block_out aliases dkv[0]), and the fp32 lse floats.
size_t ring_slot_activations(int B, int Tl, int Cl, int Ckv);
size_t ring_workspace_activations(int B, int Tl, int Cl, int Ckv);
// The workspace in `activations` (ring_workspace_activations of them, the backend's type), with
// block_lse and scratch as given.
RingWorkspace ring_workspace_at(const kernels::KernelBackend& be, void* activations,
                                float* block_lse, void* scratch, int B, int Tl, int Cl, int Ckv);
size_t ring_workspace_lse_floats(int B, int Tl, int Hl);

// out (B, Tl, Cl) and lse (B, Hl, Tl) of this rank's query rows over the whole sequence —
// overwritten; qkv (B, Tl, Cl + 2·Ckv) this rank's rows (after rotary), Hl query heads and
// kv_heads key/value heads (Ckv = kv_heads · Cl / Hl).
void ring_attention_forward(RingAttention& ring, const kernels::KernelBackend& be,
                            const RingWorkspace& ws, void* out, float* lse, const void* qkv, int B,
                            int Tl, int Cl, int Hl, int kv_heads);
// dqkv (B, Tl, Cl + 2·Ckv) — overwritten — from dout (B, Tl, Cl) and the forward's qkv, out,
// lse.
void ring_attention_backward(RingAttention& ring, const kernels::KernelBackend& be,
                             const RingWorkspace& ws, void* dqkv, const void* dout, const void* qkv,
                             const void* out, const float* lse, int B, int Tl, int Cl, int Hl,
                             int kv_heads);

}  // namespace loom
