// Dense layers through OpenBLAS sgemm. Weights are stored (OC, IC) as in torch.nn.Linear.
//
//   matmul_forward(out, inp, weight, bias, N, IC, OC);              // out = inp·Wᵀ + b
//   matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
#pragma once

namespace loom::kernels::cpu {

// out (N, OC) = inp (N, IC) · weight (OC, IC)ᵀ + bias (OC). bias may be null.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC);

// dinp (N, IC) = dout (N, OC) · weight (OC, IC)       — overwritten; skipped when dinp is null
// dweight (OC, IC) += dout ᵀ · inp                    — accumulated; skipped when null
// dbias (OC) += Σ_n dout[n]                           — accumulated; skipped when dbias is null
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int IC, int OC);

}  // namespace loom::kernels::cpu
