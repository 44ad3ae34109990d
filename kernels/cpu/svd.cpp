#include "kernels/cpu/svd.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

// LAPACK's Fortran interface (column-major), as OpenBLAS exports it.
extern "C" void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                        double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                        double* work, const int* lwork, int* iwork, int* info);

namespace loom::kernels::cpu {

void truncated_svd(const double* M, int rows, int cols, int rank, double* B, double* A) {
  std::fill_n(B, static_cast<size_t>(rows) * rank, 0.0);
  std::fill_n(A, static_cast<size_t>(rank) * cols, 0.0);
  if (rows == 0 || cols == 0 || rank == 0) return;
  const int k = std::min(rows, cols);
  std::vector<double> a(static_cast<size_t>(rows) * cols);  // column-major copy
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j)
      a[i + static_cast<size_t>(j) * rows] = M[static_cast<size_t>(i) * cols + j];
  std::vector<double> s(k), u(static_cast<size_t>(rows) * k), vt(static_cast<size_t>(k) * cols);
  std::vector<int> iwork(8 * static_cast<size_t>(k));
  const char jobz = 'S';
  int info = 0, lwork = -1;
  double query = 0;
  dgesdd_(&jobz, &rows, &cols, a.data(), &rows, s.data(), u.data(), &rows, vt.data(), &k, &query,
          &lwork, iwork.data(), &info);
  if (info != 0)
    throw std::runtime_error("dgesdd workspace query failed: info " + std::to_string(info));
  lwork = static_cast<int>(query);
  std::vector<double> work(std::max(lwork, 1));
  dgesdd_(&jobz, &rows, &cols, a.data(), &rows, s.data(), u.data(), &rows, vt.data(), &k,
          work.data(), &lwork, iwork.data(), &info);
  if (info != 0) throw std::runtime_error("dgesdd failed: info " + std::to_string(info));
  const int kept = std::min(rank, k);  // singular values come largest first
  for (int i = 0; i < rows; ++i)
    for (int r = 0; r < kept; ++r)
      B[static_cast<size_t>(i) * rank + r] = u[i + static_cast<size_t>(r) * rows] * s[r];
  for (int r = 0; r < kept; ++r)
    for (int j = 0; j < cols; ++j)
      A[static_cast<size_t>(r) * cols + j] = vt[r + static_cast<size_t>(j) * k];
}

}  // namespace loom::kernels::cpu
