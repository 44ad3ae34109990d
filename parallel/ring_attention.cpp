#include "parallel/ring_attention.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "base/error.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void* offset(void* base, size_t elements, const kernels::KernelBackend& be) {
  return static_cast<char*>(base) + elements * be.activation_bytes();
}
const void* offset(const void* base, size_t elements, const kernels::KernelBackend& be) {
  return static_cast<const char*>(base) + elements * be.activation_bytes();
}

// The blocks of this rank's queries against rank `source`'s keys that the causal mask leaves
// anything of: a key piece entirely after a query piece is skipped, one entirely before it is a
// full block, the rest (the diagonal) causal by position.
FixedList<kernels::AttentionBlock, 4> ring_blocks(const RingAttention& ring, int source, int B,
                                                  int Tl, int Cl, int Hl, int kv_heads) {
  const int hd = Cl / Hl, Ckv = kv_heads * hd;
  const int sp = ring.comm->size(), T = Tl * sp;
  const SequencePieces queries = sequence_pieces(ring.layout, T, sp, ring.comm->rank());
  const SequencePieces keys = sequence_pieces(ring.layout, T, sp, source);
  FixedList<kernels::AttentionBlock, 4> blocks;
  for (const SequencePiece& q : queries)
    for (const SequencePiece& k : keys) {
      if (k.position > q.position + q.rows - 1) continue;
      kernels::AttentionBlock b;
      b.B = B, b.H = Hl, b.hd = hd, b.kv_heads = kv_heads;
      b.q_len = Tl, b.q_begin = q.row, b.q_rows = q.rows, b.q_ld = Cl + 2 * Ckv;
      b.kv_len = Tl, b.kv_begin = k.row, b.kv_rows = k.rows, b.kv_ld = 2 * Ckv, b.v_offset = Ckv;
      b.causal = k.position + k.rows - 1 > q.position;
      b.q_position = q.position, b.kv_position = k.position;
      blocks.push_back(b);
    }
  return blocks;
}

// Waits for a transfer; the time blocked is exposed communication. A failure names the ring
// step and what was being sent or received.
void wait(RingAttention& ring, WorkPtr& work, const char* pass, int step, const char* what,
          int peer) {
  if (!work) return;
  const auto start = Clock::now();
  try {
    work->wait();
  } catch (const CommError& e) {
    throw CommError(std::string("ring attention ") + pass + ", sp rank " +
                    std::to_string(ring.comm->rank()) + " of " + std::to_string(ring.comm->size()) +
                    ", step " + std::to_string(step) + ": " + what + " sp rank " +
                    std::to_string(peer) + ": " + e.what());
  }
  const auto end = Clock::now();
  ring.wait_seconds += std::chrono::duration<double>(end - start).count();
  if (ring.on_blocked && end - start > std::chrono::microseconds(20)) ring.on_blocked(start, end);
  work.reset();
}

// Where a pass starts: the ring's peers and sizes, this rank's keys and values packed out of qkv
// into the first block buffer (the block that travels). A ring of two or more ranks moving fp32
// host activations (the MPI communicator).
struct RingPass {
  int sp, rank, next, prev;
  size_t rows, kv_count;  // B · Tl, and the elements of one key/value block
};

RingPass ring_pass_start(const RingAttention& ring, const kernels::KernelBackend& be,
                         const RingWorkspace& ws, const void* qkv, int B, int Tl, int Cl, int Ckv) {
  LOOM_CHECK(ring.comm && ring.comm->size() > 1);
  const int sp = ring.comm->size(), rank = ring.comm->rank();
  const size_t rows = static_cast<size_t>(B) * Tl;
  be.copy_rows(ws.kv[0], 2 * Ckv, offset(qkv, Cl, be), Cl + 2 * Ckv, rows, 2 * Ckv);
  return {sp, rank, (rank + 1) % sp, (rank + sp - 1) % sp, rows, rows * 2 * Ckv};
}

}  // namespace

SequencePieces sequence_pieces(SequenceLayout layout, int T, int sp, int rank) {
  LOOM_CHECK(sp >= 1 && rank >= 0 && rank < sp);
  SequencePieces pieces;
  if (layout == SequenceLayout::kContiguous) {
    LOOM_CHECK(T % sp == 0);
    const int rows = T / sp;
    pieces.push_back({0, rows, rank * rows});
    return pieces;
  }
  LOOM_CHECK(T % (2 * sp) == 0);
  const int chunk = T / (2 * sp);
  pieces.push_back({0, chunk, rank * chunk});
  pieces.push_back({chunk, chunk, (2 * sp - 1 - rank) * chunk});
  return pieces;
}

std::vector<int> sequence_positions(SequenceLayout layout, int T, int sp, int rank) {
  std::vector<int> positions;
  for (const SequencePiece& p : sequence_pieces(layout, T, sp, rank))
    for (int i = 0; i < p.rows; ++i) positions.push_back(p.position + i);
  return positions;
}

void sequence_select(const std::vector<int>& positions, const int* global, int* local, int B,
                     int T) {
  const size_t Tl = positions.size();
  for (int b = 0; b < B; ++b)
    for (size_t t = 0; t < Tl; ++t)
      local[b * Tl + t] = global[static_cast<size_t>(b) * T + positions[t]];
}

size_t ring_slot_activations(int B, int Tl, int Cl, int Ckv) {
  return static_cast<size_t>(B) * Tl * std::max(2 * Ckv, Cl);
}

size_t ring_workspace_activations(int B, int Tl, int Cl, int Ckv) {
  return 5 * ring_slot_activations(B, Tl, Cl, Ckv);
}

RingWorkspace ring_workspace_at(const kernels::KernelBackend& be, void* activations,
                                float* block_lse, void* scratch, int B, int Tl, int Cl, int Ckv) {
  const size_t slot = ring_slot_activations(B, Tl, Cl, Ckv);
  RingWorkspace ws;
  ws.kv[0] = activations;
  ws.kv[1] = offset(activations, slot, be);
  for (int i = 0; i < 3; ++i) ws.dkv[i] = offset(activations, (2 + i) * slot, be);
  ws.block_out = ws.dkv[0];  // forward only; the gradients are backward's
  ws.block_lse = block_lse;
  ws.scratch = scratch;
  return ws;
}

size_t ring_workspace_lse_floats(int B, int Tl, int Hl) { return static_cast<size_t>(B) * Hl * Tl; }

void ring_attention_forward(RingAttention& ring, const kernels::KernelBackend& be,
                            const RingWorkspace& ws, void* out, float* lse, const void* qkv, int B,
                            int Tl, int Cl, int Hl, int kv_heads) {
  const auto [sp, rank, next, prev, rows, kv_count] =
      ring_pass_start(ring, be, ws, qkv, B, Tl, Cl, kv_heads * (Cl / Hl));
  Communicator& comm = *ring.comm;
  // A query piece's first block writes out and lse; the later ones are merged into them. The
  // pieces are told apart by their first row (the first piece starts at row 0).
  bool written[2] = {false, false};
  for (int step = 0; step < sp; ++step) {
    const int source = (rank + sp - step) % sp;
    void* current = ws.kv[step % 2];
    WorkPtr receiving, sending;
    if (step + 1 < sp) {  // the next block arrives while this one is attended to
      receiving = comm.recv_async(ws.kv[(step + 1) % 2], kv_count, activation_data_type(be), prev);
      sending = comm.send_async(current, kv_count, activation_data_type(be), next);
    }
    const auto start = Clock::now();
    for (const kernels::AttentionBlock& blk : ring_blocks(ring, source, B, Tl, Cl, Hl, kv_heads)) {
      bool& first = written[blk.q_begin == 0 ? 0 : 1];
      if (!first) {
        be.attention_block_forward(out, lse, qkv, current, blk, ws.scratch);
        first = true;
      } else {
        be.attention_block_forward(ws.block_out, ws.block_lse, qkv, current, blk, ws.scratch);
        be.attention_merge(out, lse, ws.block_out, ws.block_lse, blk);
      }
    }
    ring.compute_seconds += seconds_since(start);
    wait(ring, receiving, "forward", step, "receiving keys and values from", prev);
    wait(ring, sending, "forward", step, "sending keys and values to", next);
  }
}

void ring_attention_backward(RingAttention& ring, const kernels::KernelBackend& be,
                             const RingWorkspace& ws, void* dqkv, const void* dout, const void* qkv,
                             const void* out, const float* lse, int B, int Tl, int Cl, int Hl,
                             int kv_heads) {
  const int Ckv = kv_heads * (Cl / Hl), width = Cl + 2 * Ckv;
  const auto [sp, rank, next, prev, rows, kv_count] =
      ring_pass_start(ring, be, ws, qkv, B, Tl, Cl, Ckv);
  Communicator& comm = *ring.comm;
  be.zero(dqkv, rows * width);  // dq accumulates over the steps; dk, dv are written at the end
  // dK/dV buffers rotate: `computing` takes this step's share, `arriving` the accumulator of
  // the same block from the previous rank, `leaving` the sum sent on (its send in flight).
  int computing = 0, arriving = 1, leaving = 2;
  WorkPtr dkv_sends[3];
  for (int step = 0; step < sp; ++step) {
    const int source = (rank + sp - step) % sp;
    void* current = ws.kv[step % 2];
    // Receives from the previous rank are posted in its send order: the accumulator it sent
    // at the end of its last step, then the block it sends at the start of this one.
    WorkPtr dkv_receiving, kv_receiving, kv_sending;
    if (step > 0) {
      wait(ring, dkv_sends[arriving], "backward", step, "sending dK/dV to", next);
      dkv_receiving = comm.recv_async(ws.dkv[arriving], kv_count, activation_data_type(be), prev);
    }
    if (step + 1 < sp) {
      kv_receiving =
          comm.recv_async(ws.kv[(step + 1) % 2], kv_count, activation_data_type(be), prev);
      kv_sending = comm.send_async(current, kv_count, activation_data_type(be), next);
    }
    const auto start = Clock::now();
    be.zero(ws.dkv[computing], kv_count);
    for (const kernels::AttentionBlock& blk : ring_blocks(ring, source, B, Tl, Cl, Hl, kv_heads))
      be.attention_block_backward(dqkv, ws.dkv[computing], dout, qkv, current, out, lse, blk,
                                  ws.scratch);
    ring.compute_seconds += seconds_since(start);
    if (step > 0) {
      wait(ring, dkv_receiving, "backward", step, "receiving dK/dV from", prev);
      be.vector_add(ws.dkv[computing], ws.dkv[arriving], kv_count);
    }
    dkv_sends[computing] =
        comm.send_async(ws.dkv[computing], kv_count, activation_data_type(be), next);
    // The sum just sent leaves; the accumulator just added is free to compute into.
    const int sent = computing;
    computing = arriving;
    arriving = leaving;
    leaving = sent;
    wait(ring, kv_receiving, "backward", step, "receiving keys and values from", prev);
    wait(ring, kv_sending, "backward", step, "sending keys and values to", next);
  }
  // This rank's own block comes home with every rank's share.
  wait(ring, dkv_sends[arriving], "backward", sp, "sending dK/dV to", next);
  WorkPtr home = comm.recv_async(ws.dkv[arriving], kv_count, activation_data_type(be), prev);
  wait(ring, home, "backward", sp, "receiving its own dK/dV home from", prev);
  be.copy_rows(offset(dqkv, Cl, be), width, ws.dkv[arriving], 2 * Ckv, rows, 2 * Ckv);
  for (WorkPtr& work : dkv_sends) wait(ring, work, "backward", sp, "sending dK/dV to", next);
}

}  // namespace loom
