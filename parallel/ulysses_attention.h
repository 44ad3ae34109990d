// Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023; docs/architecture.md,
// "Sequence parallelism"): the sp ranks of a group hold rows of each sequence (the same layouts
// as the ring, parallel/ring_attention.h), and around attention one all-to-all swaps that split
// for a split of the heads: rank j receives every rank's rows of its Hl / sp query heads and
// kv_heads / sp key/value heads, puts them in sequence order, runs ordinary causal attention over
// the whole sequence, and a second all-to-all returns each rank its rows of every head.
//
// Against the ring: two all-to-alls of the rank's q, k, v and output (each rank sends
// (sp − 1) / sp of them) instead of sp − 1 hops of every key/value block, and one whole-sequence
// attention call instead of blocks merged by their log-sum-exp; but the heads must divide by sp.
//
// Forward leaves the gathered head-group q, k, v in `qkv` (same size as the rank's rows), which
// backward reads; `lse` is the (B, Hl / sp, T) log-sum-exp of those heads over the whole sequence
// (as many floats as the ring's (B, Hl, Tl)). Backward sends the output and its gradient to the
// head split, runs attention's backward there, and returns dq, dk, dv to the row split.
//
// Collective over the sp group (two or more ranks) in the same order on every rank; buffers are
// the caller's (UlyssesWorkspace, ulysses_workspace_activations elements of the backend's type).
//
//   loom::UlyssesAttention u{&sp_comm, loom::SequenceLayout::kZigzag};
//   loom::ulysses_attention_forward(u, be, ws, out, lse, qkv, B, Tl, Cl, Hl, kv_heads);
//   loom::ulysses_attention_backward(u, be, ws, dqkv, dout, qkv, out, lse, B, Tl, Cl, Hl,
//   kv_heads);
#pragma once
#include <cstddef>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/ring_attention.h"

namespace loom {

// parallel.sequence_method: how attention sees the whole sequence.
enum class SequenceMethod { kRing, kUlysses };

struct UlyssesAttention {
  Communicator* comm = nullptr;  // the sp group; not owned
  SequenceLayout layout = SequenceLayout::kZigzag;
  double wait_seconds = 0;  // blocked on the all-to-alls (the caller resets it)
};

// Buffers of one rank in the backend's memory, for micro-batches of up to B × Tl local rows.
struct UlyssesWorkspace {
  void* send = nullptr;     // the blocks leaving, one per rank
  void* receive = nullptr;  // the blocks arriving
  void* out = nullptr;      // (B, T, Cl / sp) the head group's output over the whole sequence
  void* dout = nullptr;     // (B, T, Cl / sp) its gradient
  void* dqkv = nullptr;     // (B, T, (Cl + 2·Ckv) / sp) the head group's dq, dk, dv
  void* scratch = nullptr;  // attention_scratch_bytes(B, T, Cl / sp, Hl / sp) bytes
};

// Activation elements of a workspace (send, receive, out, dout, dqkv), Ckv = kv_heads · Cl / Hl.
size_t ulysses_workspace_activations(int B, int Tl, int Cl, int Ckv);
// The workspace in `activations` (ulysses_workspace_activations of them), with scratch as given.
UlyssesWorkspace ulysses_workspace_at(const kernels::KernelBackend& be, void* activations,
                                      void* scratch, int B, int Tl, int Cl, int Ckv);
// Scratch bytes of the whole-sequence attention on a head group.
size_t ulysses_scratch_bytes(const kernels::KernelBackend& be, int B, int Tl, int Cl, int Hl,
                             int sp);

// out (B, Tl, Cl) — overwritten — this rank's rows of every head; lse (B, Hl / sp, T) and qkv
// (B, Tl, Cl + 2·Ckv) (in: this rank's rows after rotary; out: the head group over the whole
// sequence) for backward. Hl and kv_heads must divide by the group's size.
void ulysses_attention_forward(UlyssesAttention& u, const kernels::KernelBackend& be,
                               const UlyssesWorkspace& ws, void* out, float* lse, void* qkv, int B,
                               int Tl, int Cl, int Hl, int kv_heads);
// dqkv (B, Tl, Cl + 2·Ckv) — overwritten — this rank's rows, from dout (B, Tl, Cl) and the
// forward's out (this rank's rows), qkv and lse (as forward left them).
void ulysses_attention_backward(UlyssesAttention& u, const kernels::KernelBackend& be,
                                const UlyssesWorkspace& ws, void* dqkv, const void* dout,
                                const void* qkv, const void* out, const float* lse, int B, int Tl,
                                int Cl, int Hl, int kv_heads);

}  // namespace loom
