// Truncated singular value decomposition through LAPACK's dgesdd (OpenBLAS carries LAPACK), in
// double precision: for converting a model's tied layers into a shared one plus low-rank deltas.
//
//   std::vector<double> B(rows * rank), A(rank * cols);
//   loom::kernels::cpu::truncated_svd(M.data(), rows, cols, rank, B.data(), A.data());
//   // M ≈ B · A, the best rank-`rank` approximation in the Frobenius norm
#pragma once

namespace loom::kernels::cpu {

// M (rows, cols), row-major: B (rows, rank) = U_rank · Σ_rank and A (rank, cols) = V_rankᵀ,
// overwritten (with rank past min(rows, cols), the extra columns of B and rows of A are zero).
// Throws std::runtime_error when LAPACK reports a failure.
void truncated_svd(const double* M, int rows, int cols, int rank, double* B, double* A);

}  // namespace loom::kernels::cpu
