#include "parallel/ulysses_attention.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

// Sizes of one call: N = B·Tl local rows of width W = C + 2·Ckv; a head group has Cq = C / S
// query and Ckq = Ckv / S key (and value) columns, Wq = Cq + 2·Ckq.
struct Split {
  const kernels::KernelBackend& be;
  SequenceLayout layout;
  int S, B, Tl, T, Cl, Ckv, Cq, Ckq;
  size_t N() const { return static_cast<size_t>(B) * Tl; }
  size_t W() const { return static_cast<size_t>(Cl) + 2 * Ckv; }
  size_t Wq() const { return static_cast<size_t>(Cq) + 2 * Ckq; }
  char* at(void* p, size_t elements) const {
    return static_cast<char*>(p) + elements * be.activation_bytes();
  }
  const char* at(const void* p, size_t elements) const {
    return static_cast<const char*>(p) + elements * be.activation_bytes();
  }
};

Split split_of(const UlyssesAttention& u, const kernels::KernelBackend& be, int B, int Tl, int Cl,
               int Hl, int kv_heads) {
  const int S = u.comm->size();
  LOOM_CHECK(S > 1 && Hl % S == 0 && kv_heads % S == 0 && Cl % Hl == 0);
  const int Ckv = kv_heads * (Cl / Hl);
  return {be, u.layout, S, B, Tl, Tl * S, Cl, Ckv, Cl / S, Ckv / S};
}

// Head group j's columns of a (rows, W) q|k|v tensor ↔ a (rows, Wq) block: q, then k, then v.
void qkv_to_block(const Split& s, const void* qkv, void* block, int j) {
  const size_t N = s.N(), W = s.W(), Wq = s.Wq();
  s.be.copy_rows(block, Wq, s.at(qkv, j * s.Cq), W, N, s.Cq);
  s.be.copy_rows(s.at(block, s.Cq), Wq, s.at(qkv, s.Cl + j * s.Ckq), W, N, s.Ckq);
  s.be.copy_rows(s.at(block, s.Cq + s.Ckq), Wq, s.at(qkv, s.Cl + s.Ckv + j * s.Ckq), W, N, s.Ckq);
}
void block_to_qkv(const Split& s, const void* block, void* qkv, int j) {
  const size_t N = s.N(), W = s.W(), Wq = s.Wq();
  s.be.copy_rows(s.at(qkv, j * s.Cq), W, block, Wq, N, s.Cq);
  s.be.copy_rows(s.at(qkv, s.Cl + j * s.Ckq), W, s.at(block, s.Cq), Wq, N, s.Ckq);
  s.be.copy_rows(s.at(qkv, s.Cl + s.Ckv + j * s.Ckq), W, s.at(block, s.Cq + s.Ckq), Wq, N, s.Ckq);
}

// Rank r's rows of a whole-sequence tensor (B, T, cols) ↔ block r of `blocks` (blocks of N rows,
// `ld` apart, the columns from `col`): the sequence pieces rank r holds, in its row order.
void blocks_to_sequence(const Split& s, const void* blocks, size_t ld, size_t col, void* sequence,
                        size_t cols) {
  for (int r = 0; r < s.S; ++r)
    for (const SequencePiece& p : sequence_pieces(s.layout, s.T, s.S, r))
      for (int b = 0; b < s.B; ++b)
        s.be.copy_rows(
            s.at(sequence, (static_cast<size_t>(b) * s.T + p.position) * cols), cols,
            s.at(blocks, r * s.N() * ld + (static_cast<size_t>(b) * s.Tl + p.row) * ld + col), ld,
            p.rows, cols);
}
void sequence_to_blocks(const Split& s, const void* sequence, size_t cols, void* blocks) {
  for (int r = 0; r < s.S; ++r)
    for (const SequencePiece& p : sequence_pieces(s.layout, s.T, s.S, r))
      for (int b = 0; b < s.B; ++b)
        s.be.copy(s.at(blocks, (r * s.N() + static_cast<size_t>(b) * s.Tl + p.row) * cols),
                  s.at(sequence, (static_cast<size_t>(b) * s.T + p.position) * cols),
                  static_cast<size_t>(p.rows) * cols);
}

// receive ← the all-to-all of send, blocks of `count` elements; the wait is exposed.
void exchange(UlyssesAttention& u, const kernels::KernelBackend& be, const void* send,
              void* receive, size_t count) {
  WorkPtr work = u.comm->all_to_all_async(send, receive, count, activation_data_type(be));
  const auto start = Clock::now();
  work->wait();
  u.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

// Elements of the workspace's parts: each exchange buffer (q, k, v, or the output beside its
// gradient), and the head group's output (its gradient the same) and dq, dk, dv.
struct WorkspaceParts {
  size_t exchanged, out, dqkv;
};
WorkspaceParts workspace_parts(int B, int Tl, int Cl, int Ckv) {
  const size_t N = static_cast<size_t>(B) * Tl, W = static_cast<size_t>(Cl) + 2 * Ckv;
  return {N * std::max<size_t>(W, 2 * static_cast<size_t>(Cl)), N * Cl, N * W};
}

}  // namespace

size_t ulysses_workspace_activations(int B, int Tl, int Cl, int Ckv) {
  const WorkspaceParts p = workspace_parts(B, Tl, Cl, Ckv);
  return 2 * p.exchanged + 2 * p.out + p.dqkv;
}

UlyssesWorkspace ulysses_workspace_at(const kernels::KernelBackend& be, void* activations,
                                      void* scratch, int B, int Tl, int Cl, int Ckv) {
  const WorkspaceParts p = workspace_parts(B, Tl, Cl, Ckv);
  char* base = static_cast<char*>(activations);
  const size_t bytes = be.activation_bytes();
  UlyssesWorkspace ws;
  ws.send = base;
  ws.receive = base + p.exchanged * bytes;
  ws.out = base + 2 * p.exchanged * bytes;
  ws.dout = base + (2 * p.exchanged + p.out) * bytes;
  ws.dqkv = base + (2 * p.exchanged + 2 * p.out) * bytes;
  ws.scratch = scratch;
  return ws;
}

size_t ulysses_scratch_bytes(const kernels::KernelBackend& be, int B, int Tl, int Cl, int Hl,
                             int sp) {
  return be.attention_scratch_bytes(B, Tl * sp, Cl / sp, Hl / sp);
}

void ulysses_attention_forward(UlyssesAttention& u, const kernels::KernelBackend& be,
                               const UlyssesWorkspace& ws, void* out, float* lse, void* qkv, int B,
                               int Tl, int Cl, int Hl, int kv_heads) {
  const Split s = split_of(u, be, B, Tl, Cl, Hl, kv_heads);
  const size_t N = s.N(), Wq = s.Wq();
  for (int j = 0; j < s.S; ++j) qkv_to_block(s, qkv, s.at(ws.send, j * N * Wq), j);
  exchange(u, be, ws.send, ws.receive, N * Wq);
  blocks_to_sequence(s, ws.receive, Wq, 0, qkv, Wq);  // the head group, in sequence order
  be.attention_forward(ws.out, lse, qkv, B, s.T, s.Cq, Hl / s.S, kv_heads / s.S, ws.scratch);
  sequence_to_blocks(s, ws.out, s.Cq, ws.send);
  exchange(u, be, ws.send, ws.receive, N * s.Cq);
  for (int j = 0; j < s.S; ++j)
    be.copy_rows(s.at(out, j * s.Cq), Cl, s.at(ws.receive, j * N * s.Cq), s.Cq, N, s.Cq);
}

void ulysses_attention_backward(UlyssesAttention& u, const kernels::KernelBackend& be,
                                const UlyssesWorkspace& ws, void* dqkv, const void* dout,
                                const void* qkv, const void* out, const float* lse, int B, int Tl,
                                int Cl, int Hl, int kv_heads) {
  const Split s = split_of(u, be, B, Tl, Cl, Hl, kv_heads);
  const size_t N = s.N(), Wq = s.Wq(), Cq = s.Cq;
  // The output and its gradient to the head split, side by side in one exchange.
  for (int j = 0; j < s.S; ++j) {
    char* block = s.at(ws.send, j * N * 2 * Cq);
    be.copy_rows(block, 2 * Cq, s.at(out, j * Cq), Cl, N, Cq);
    be.copy_rows(s.at(block, Cq), 2 * Cq, s.at(dout, j * Cq), Cl, N, Cq);
  }
  exchange(u, be, ws.send, ws.receive, N * 2 * Cq);
  blocks_to_sequence(s, ws.receive, 2 * Cq, 0, ws.out, Cq);
  blocks_to_sequence(s, ws.receive, 2 * Cq, Cq, ws.dout, Cq);
  be.attention_backward(ws.dqkv, ws.dout, qkv, ws.out, lse, B, s.T, s.Cq, Hl / s.S, kv_heads / s.S,
                        ws.scratch);
  sequence_to_blocks(s, ws.dqkv, Wq, ws.send);
  exchange(u, be, ws.send, ws.receive, N * Wq);
  for (int j = 0; j < s.S; ++j) block_to_qkv(s, s.at(ws.receive, j * N * Wq), dqkv, j);
}

}  // namespace loom
