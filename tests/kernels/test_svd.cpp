// The truncated SVD (LAPACK dgesdd) against what it must satisfy: at full rank B·A is the matrix;
// at rank k the error is the root sum of the dropped singular values' squares of a matrix built
// with known singular values; B's columns are orthogonal and A's rows orthonormal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/svd.h"

namespace loom::kernels::test {
namespace {

std::vector<double> product(const std::vector<double>& B, const std::vector<double>& A, int rows,
                            int rank, int cols) {
  std::vector<double> M(static_cast<size_t>(rows) * cols, 0.0);
  for (int i = 0; i < rows; ++i)
    for (int r = 0; r < rank; ++r)
      for (int j = 0; j < cols; ++j) M[i * cols + j] += B[i * rank + r] * A[r * cols + j];
  return M;
}

// Q (n, n) orthogonal: Gram–Schmidt of a random matrix.
std::vector<double> orthogonal(int n, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> q(static_cast<size_t>(n) * n);
  for (double& x : q) x = normal(rng);
  for (int c = 0; c < n; ++c) {
    for (int p = 0; p < c; ++p) {
      double dot = 0;
      for (int i = 0; i < n; ++i) dot += q[i * n + c] * q[i * n + p];
      for (int i = 0; i < n; ++i) q[i * n + c] -= dot * q[i * n + p];
    }
    double norm = 0;
    for (int i = 0; i < n; ++i) norm += q[i * n + c] * q[i * n + c];
    for (int i = 0; i < n; ++i) q[i * n + c] /= std::sqrt(norm);
  }
  return q;
}

TEST(TruncatedSvd, FullRankReproducesTheMatrix) {
  std::mt19937 rng(5);
  std::normal_distribution<double> normal;
  for (auto [rows, cols] : {std::pair{7, 4}, std::pair{4, 7}, std::pair{6, 6}}) {
    std::vector<double> M(static_cast<size_t>(rows) * cols);
    for (double& x : M) x = normal(rng);
    const int rank = std::min(rows, cols) + 2;  // past full: the extra factors are zero
    std::vector<double> B(rows * rank), A(rank * cols);
    cpu::truncated_svd(M.data(), rows, cols, rank, B.data(), A.data());
    const std::vector<double> again = product(B, A, rows, rank, cols);
    for (size_t i = 0; i < M.size(); ++i) EXPECT_NEAR(again[i], M[i], 1e-12) << rows << "x" << cols;
    for (int j = 0; j < cols; ++j) EXPECT_EQ(A[(rank - 1) * cols + j], 0.0);
  }
}

TEST(TruncatedSvd, RankKErrorIsTheDroppedSingularValues) {
  std::mt19937 rng(6);
  const int n = 6, k = 2;
  const std::vector<double> sigma = {5, 4, 3, 2, 1, 0.5};
  const std::vector<double> U = orthogonal(n, rng), V = orthogonal(n, rng);
  std::vector<double> M(n * n, 0.0);  // U diag(sigma) Vᵀ
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      for (int r = 0; r < n; ++r) M[i * n + j] += U[i * n + r] * sigma[r] * V[j * n + r];
  std::vector<double> B(n * k), A(k * n);
  cpu::truncated_svd(M.data(), n, n, k, B.data(), A.data());
  const std::vector<double> approx = product(B, A, n, k, n);
  double error = 0;
  for (int i = 0; i < n * n; ++i) error += (M[i] - approx[i]) * (M[i] - approx[i]);
  EXPECT_NEAR(std::sqrt(error), std::sqrt(9.0 + 4.0 + 1.0 + 0.25), 1e-10);
  for (int r = 0; r < k; ++r)
    for (int q = 0; q < k; ++q) {
      double dot = 0;
      for (int j = 0; j < n; ++j) dot += A[r * n + j] * A[q * n + j];
      EXPECT_NEAR(dot, r == q ? 1.0 : 0.0, 1e-12);
    }
}

}  // namespace
}  // namespace loom::kernels::test
