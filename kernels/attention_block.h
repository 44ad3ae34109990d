// The shape of one block of ring attention, shared by the CPU and CUDA kernels: a range of
// query rows of this rank's part of the sequences against a range of key/value rows (this
// rank's or another's), with the tokens' global positions deciding the causal mask.
//
// Layouts (per sequence b of B; H query heads of hd; out rows are H·hd wide). Grouped-query
// attention: kv_heads key/value heads (dividing H, 0 meaning H), query head h reading key/value
// head kv_head(h) = h / (H / kv_heads), so consecutive query heads share one.
//   q   (B, q_len, q_ld):   head h's query of row t at q[(b·q_len + t)·q_ld + h·hd]
//   kv  (B, kv_len, kv_ld): kv head g's key at column g·hd, its value at v_offset + g·hd
//   out (B, q_len, H·hd), lse (B, H, q_len): the block's rows [q_begin, q_begin + q_rows)
// A packed qkv (B, T, C + 2·Ckv) (C = H·hd, Ckv = kv_heads·hd: q, then k, then v) is q with
// q_ld = C + 2·Ckv and kv = qkv + C with kv_ld = q_ld, v_offset = Ckv (attention_whole_sequence).
//
//   AttentionBlock blk = attention_whole_sequence(B, T, C, H, H);
//   attention_block_forward(out, lse, qkv, qkv + C, blk, scratch);   // = causal attention
#pragma once

// visible() runs on the host and, compiled by nvcc, in kernels.
#if defined(__CUDACC__)
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif

namespace loom::kernels {

struct AttentionBlock {
  int B = 0, H = 0, hd = 0;
  // Query rows [q_begin, q_begin + q_rows) of sequences of q_len rows, q_ld elements apart.
  int q_len = 0, q_begin = 0, q_rows = 0, q_ld = 0;
  // Key/value rows [kv_begin, kv_begin + kv_rows) of sequences of kv_len rows, kv_ld apart.
  int kv_len = 0, kv_begin = 0, kv_rows = 0, kv_ld = 0, v_offset = 0;
  // Causal: query row q_begin + i (global position q_position + i) sees key row kv_begin + j
  // only if kv_position + j ≤ q_position + i. Otherwise (a full block) every key.
  bool causal = false;
  int q_position = 0, kv_position = 0;
  int kv_heads = 0;  // key/value heads; 0: H (no grouping)

  LOOM_HOST_DEVICE int kv_head_count() const { return kv_heads > 0 ? kv_heads : H; }
  // The key/value head query head h reads.
  LOOM_HOST_DEVICE int kv_head(int h) const { return h / (H / kv_head_count()); }

  // Keys query row i (0-based within the block) sees: a prefix of the block's key rows.
  LOOM_HOST_DEVICE int visible(int i) const {
    if (!causal) return kv_rows;
    const int n = q_position + i - kv_position + 1;
    return n < 0 ? 0 : (n > kv_rows ? kv_rows : n);
  }
};

// Whole causal attention over a packed qkv (B, T, C + 2·Ckv) as one block: every row against
// every row, causal from position 0, with q = qkv and kv = qkv + C.
inline AttentionBlock attention_whole_sequence(int B, int T, int C, int H, int kv_heads) {
  AttentionBlock blk;
  const int hd = C / H, width = C + 2 * kv_heads * hd;
  blk.B = B, blk.H = H, blk.hd = hd, blk.kv_heads = kv_heads;
  blk.q_len = T, blk.q_begin = 0, blk.q_rows = T, blk.q_ld = width;
  blk.kv_len = T, blk.kv_begin = 0, blk.kv_rows = T, blk.kv_ld = width;
  blk.v_offset = kv_heads * hd;
  blk.causal = true;
  return blk;
}

// Elements of one packed qkv row: H query heads and kv_heads key and value heads of hd.
inline int qkv_width(int C, int H, int kv_heads) { return C + 2 * kv_heads * (C / H); }

}  // namespace loom::kernels
