// The MLP's activations: GELU, tanh approximation (torch.nn.GELU(approximate="tanh")),
// elementwise; and SwiGLU, silu(gate) ∘ up over rows [gate | up] (Llama's MLP).
#pragma once
#include <cstddef>

namespace loom::kernels::cpu {

// out (n) = gelu(inp). out may alias inp.
void gelu_forward(float* out, const float* inp, size_t n);
// dinp (n) = gelu'(inp) · dout — overwritten. dinp may alias dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// out (N, F) = silu(gate) ∘ up, silu(x) = x·σ(x), from inp (N, 2F) rows [gate | up].
void swiglu_forward(float* out, const float* inp, int N, int F);
// dinp (N, 2F) — overwritten — from dout (N, F): d gate = dout·up·σ(g)(1 + g(1 − σ(g))),
// d up = dout·silu(g).
void swiglu_backward(float* dinp, const float* inp, const float* dout, int N, int F);

}  // namespace loom::kernels::cpu
