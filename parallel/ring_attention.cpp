#include "parallel/ring_attention.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "core/error.h"

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
std::vector<kernels::AttentionBlock> ring_blocks(const RingAttention& ring, int source, int B,
                                                 int Tl, int Cl, int Hl) {
  const int sp = ring.comm->size(), T = Tl * sp;
  const std::vector<SequencePiece> queries = sequence_pieces(ring.layout, T, sp, ring.comm->rank());
  const std::vector<SequencePiece> keys = sequence_pieces(ring.layout, T, sp, source);
  std::vector<kernels::AttentionBlock> blocks;
  for (const SequencePiece& q : queries)
    for (const SequencePiece& k : keys) {
      if (k.position > q.position + q.rows - 1) continue;
      kernels::AttentionBlock b;
      b.B = B, b.H = Hl, b.hd = Cl / Hl;
      b.q_len = Tl, b.q_begin = q.row, b.q_rows = q.rows, b.q_ld = 3 * Cl;
      b.kv_len = Tl, b.kv_begin = k.row, b.kv_rows = k.rows, b.kv_ld = 2 * Cl, b.v_offset = Cl;
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
                    std::to_string(ring.comm->rank()) + " of " +
                    std::to_string(ring.comm->size()) + ", step " + std::to_string(step) + ": " +
                    what + " sp rank " + std::to_string(peer) + ": " + e.what());
  }
  const auto end = Clock::now();
  ring.wait_seconds += std::chrono::duration<double>(end - start).count();
  if (ring.on_blocked && end - start > std::chrono::microseconds(20)) ring.on_blocked(start, end);
  work.reset();
}

// A ring of two or more ranks moving fp32 host activations (the MPI communicator).
void check_ring(const RingAttention& ring, const kernels::KernelBackend& be) {
  LOOM_CHECK(ring.comm && ring.comm->size() > 1);
  LOOM_CHECK(be.activation_bytes() == sizeof(float));
}

}  // namespace

std::vector<SequencePiece> sequence_pieces(SequenceLayout layout, int T, int sp, int rank) {
  LOOM_CHECK(sp >= 1 && rank >= 0 && rank < sp);
  if (layout == SequenceLayout::kContiguous) {
    LOOM_CHECK(T % sp == 0);
    const int rows = T / sp;
    return {{0, rows, rank * rows}};
  }
  LOOM_CHECK(T % (2 * sp) == 0);
  const int chunk = T / (2 * sp);
  return {{0, chunk, rank * chunk}, {chunk, chunk, (2 * sp - 1 - rank) * chunk}};
}

std::vector<int> sequence_positions(SequenceLayout layout, int T, int sp, int rank) {
  std::vector<int> positions;
  for (const SequencePiece& p : sequence_pieces(layout, T, sp, rank))
    for (int i = 0; i < p.rows; ++i) positions.push_back(p.position + i);
  return positions;
}

void sequence_select(SequenceLayout layout, int sp, int rank, const int* global, int* local,
                     int B, int T) {
  const std::vector<int> positions = sequence_positions(layout, T, sp, rank);
  const size_t Tl = positions.size();
  for (int b = 0; b < B; ++b)
    for (size_t t = 0; t < Tl; ++t)
      local[b * Tl + t] = global[static_cast<size_t>(b) * T + positions[t]];
}

size_t ring_workspace_activations(int B, int Tl, int Cl) {
  return 5 * static_cast<size_t>(B) * Tl * 2 * Cl;
}

size_t ring_workspace_lse_floats(int B, int Tl, int Hl) {
  return static_cast<size_t>(B) * Hl * Tl;
}

void ring_attention_forward(RingAttention& ring, const kernels::KernelBackend& be,
                            const RingWorkspace& ws, void* out, float* lse, const void* qkv,
                            int B, int Tl, int Cl, int Hl) {
  check_ring(ring, be);
  Communicator& comm = *ring.comm;
  const int sp = comm.size(), rank = comm.rank();
  const int next = (rank + 1) % sp, prev = (rank + sp - 1) % sp;
  const size_t kv_count = static_cast<size_t>(B) * Tl * 2 * Cl;
  const size_t rows = static_cast<size_t>(B) * Tl;
  // This rank's keys and values, out of the packed qkv: the block that travels.
  be.copy_rows(ws.kv[0], 2 * Cl, offset(qkv, Cl, be), 3 * Cl, rows, 2 * Cl);
  // A query piece's first block writes out and lse; the later ones are merged into them.
  std::vector<int> written;  // q_begin of the pieces written
  for (int step = 0; step < sp; ++step) {
    const int source = (rank + sp - step) % sp;
    void* current = ws.kv[step % 2];
    WorkPtr receiving, sending;
    if (step + 1 < sp) {  // the next block arrives while this one is attended to
      receiving = comm.recv_async(ws.kv[(step + 1) % 2], kv_count, DataType::kFloat32, prev);
      sending = comm.send_async(current, kv_count, DataType::kFloat32, next);
    }
    const auto start = Clock::now();
    for (const kernels::AttentionBlock& blk : ring_blocks(ring, source, B, Tl, Cl, Hl)) {
      if (std::find(written.begin(), written.end(), blk.q_begin) == written.end()) {
        be.attention_block_forward(out, lse, qkv, current, blk, ws.scratch);
        written.push_back(blk.q_begin);
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
                             const RingWorkspace& ws, void* dqkv, const void* dout,
                             const void* qkv, const void* out, const float* lse, int B, int Tl,
                             int Cl, int Hl) {
  check_ring(ring, be);
  Communicator& comm = *ring.comm;
  const int sp = comm.size(), rank = comm.rank();
  const int next = (rank + 1) % sp, prev = (rank + sp - 1) % sp;
  const size_t kv_count = static_cast<size_t>(B) * Tl * 2 * Cl;
  const size_t rows = static_cast<size_t>(B) * Tl;
  be.zero(dqkv, rows * 3 * Cl);  // dq accumulates over the steps; dk, dv are written at the end
  be.copy_rows(ws.kv[0], 2 * Cl, offset(qkv, Cl, be), 3 * Cl, rows, 2 * Cl);
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
      dkv_receiving = comm.recv_async(ws.dkv[arriving], kv_count, DataType::kFloat32, prev);
    }
    if (step + 1 < sp) {
      kv_receiving = comm.recv_async(ws.kv[(step + 1) % 2], kv_count, DataType::kFloat32, prev);
      kv_sending = comm.send_async(current, kv_count, DataType::kFloat32, next);
    }
    const auto start = Clock::now();
    be.zero(ws.dkv[computing], kv_count);
    for (const kernels::AttentionBlock& blk : ring_blocks(ring, source, B, Tl, Cl, Hl))
      be.attention_block_backward(dqkv, ws.dkv[computing], dout, qkv, current, out, lse, blk,
                                  ws.scratch);
    ring.compute_seconds += seconds_since(start);
    if (step > 0) {
      wait(ring, dkv_receiving, "backward", step, "receiving dK/dV from", prev);
      be.vector_add(ws.dkv[computing], ws.dkv[arriving], kv_count);
    }
    dkv_sends[computing] = comm.send_async(ws.dkv[computing], kv_count, DataType::kFloat32, next);
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
  WorkPtr home = comm.recv_async(ws.dkv[arriving], kv_count, DataType::kFloat32, prev);
  wait(ring, home, "backward", sp, "receiving its own dK/dV home from", prev);
  be.copy_rows(offset(dqkv, Cl, be), 3 * Cl, ws.dkv[arriving], 2 * Cl, rows, 2 * Cl);
  for (WorkPtr& work : dkv_sends) wait(ring, work, "backward", sp, "sending dK/dV to", next);
}

}  // namespace loom
