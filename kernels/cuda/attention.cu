// Whole causal attention is one ring-attention block (kernels/cuda/attention_block.h): every row
// of qkv against every row, causal from position 0. One set of kernels serves both, as on the
// CPU (kernels/cpu/attention.cpp).
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>

#include "kernels/attention_block.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_block.h"
#include "kernels/cuda/check.h"

namespace loom::kernels::cuda {
namespace {

// Shapes the block kernels cannot take, named for these functions (the head size and the
// sequence length the block kernels check too).
void check_shape(int B, int T, int C, int H, int kv_heads, const char* function) {
  if (B < 0 || T < 0 || C < 0 || H <= 0 || C % H != 0 || kv_heads <= 0 || H % kv_heads != 0)
    throw std::invalid_argument(
        std::string(function) +
        ": need B, T, C ≥ 0, H > 0 dividing C and kv_heads > 0 dividing H (B=" + std::to_string(B) +
        " T=" + std::to_string(T) + " C=" + std::to_string(C) + " H=" + std::to_string(H) +
        " kv_heads=" + std::to_string(kv_heads) + ")");
}

}  // namespace

size_t attention_scratch_bytes(int B, int T, int C, int H) {
  (void)C;
  return attention_block_scratch_bytes(B, H, T);
}

template <typename Act>
void attention_forward(const Context& ctx, Act* out, float* lse, const Act* qkv, int B, int T,
                       int C, int H, int kv_heads, void* scratch) {
  check_shape(B, T, C, H, kv_heads, "attention_forward");
  if (B == 0 || T == 0 || C == 0) return;
  attention_block_forward<Act>(ctx, out, lse, qkv, qkv + C,
                               attention_whole_sequence(B, T, C, H, kv_heads), scratch);
}

template <typename Act>
void attention_backward(const Context& ctx, Act* dqkv, const Act* dout, const Act* qkv,
                        const Act* out, const float* lse, int B, int T, int C, int H, int kv_heads,
                        void* scratch) {
  check_shape(B, T, C, H, kv_heads, "attention_backward");
  if (B == 0 || T == 0 || C == 0) return;
  // The block backward accumulates dq and dk, dv (the q, k and v columns of dqkv).
  const size_t width = static_cast<size_t>(qkv_width(C, H, kv_heads));
  CUDA_CHECK(
      cudaMemsetAsync(dqkv, 0, static_cast<size_t>(B) * T * width * sizeof(Act), ctx.stream));
  attention_block_backward<Act>(ctx, dqkv, dqkv + C, dout, qkv, qkv + C, out, lse,
                                attention_whole_sequence(B, T, C, H, kv_heads), scratch);
}

template void attention_forward<float>(const Context&, float*, float*, const float*, int, int, int,
                                       int, int, void*);
template void attention_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, float*,
                                               const __nv_bfloat16*, int, int, int, int, int,
                                               void*);
template void attention_backward<float>(const Context&, float*, const float*, const float*,
                                        const float*, const float*, int, int, int, int, int, void*);
template void attention_backward<__nv_bfloat16>(const Context&, __nv_bfloat16*,
                                                const __nv_bfloat16*, const __nv_bfloat16*,
                                                const __nv_bfloat16*, const float*, int, int, int,
                                                int, int, void*);

}  // namespace loom::kernels::cuda
