// GELU, tanh approximation (torch.nn.GELU(approximate="tanh")), elementwise.
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// out (n) = gelu(inp). out may alias inp.
void gelu_forward(float* out, const float* inp, size_t n);
// dinp (n) = gelu'(inp) · dout — overwritten. dinp may alias dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

}  // namespace loom::kernels::cpu
