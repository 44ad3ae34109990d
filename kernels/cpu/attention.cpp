#include "kernels/cpu/attention.h"

#include <cstring>

#include "kernels/cpu/attention_block.h"

// The whole sequence is one ring-attention block (kernels/attention_block.h).
namespace loom::kernels::cpu {

size_t attention_scratch_floats(int T, int threads) {
  return attention_block_scratch_floats(T, threads);
}

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int H,
                       int kv_heads, float* scratch) {
  attention_block_forward(out, lse, qkv, qkv + C, attention_whole_sequence(B, T, C, H, kv_heads),
                          scratch);
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int C, int H, int kv_heads,
                        float* scratch) {
  // The block backward accumulates dq and dk, dv (the q, k and v columns of dqkv).
  std::memset(dqkv, 0, static_cast<size_t>(B) * T * qkv_width(C, H, kv_heads) * sizeof(float));
  attention_block_backward(dqkv, dqkv + C, dout, qkv, qkv + C, out, lse,
                           attention_whole_sequence(B, T, C, H, kv_heads), scratch);
}

}  // namespace loom::kernels::cpu
