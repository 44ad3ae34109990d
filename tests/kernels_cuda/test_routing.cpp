// The routing kernels of Mixture-of-Recursions (kernels/cuda/routing.h) through the CUDA backend
// at fp32 and bf16, against the same double-precision references as the CPU backends
// (tests/kernels/routing_checks.h).
#include <gtest/gtest.h>

#include <memory>

#include "kernels/cuda/backend.h"
#include "tests/kernels/routing_checks.h"

namespace loom::kernels::test {
namespace {

class RoutingCuda : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (cuda::cuda_devices() == 0) GTEST_SKIP() << "no CUDA device";
    be = cuda::make_cuda_backend(/*device=*/0, /*bf16=*/GetParam());
  }
  // Activation outputs: fp32 to rounding, bf16 to one rounding of each.
  double tol() const { return GetParam() ? 1.0 / 256 : 1e-6; }
  std::shared_ptr<const KernelBackend> be;
};

TEST_P(RoutingCuda, GatherRowsScalesTheNamedRows) { check_gather_rows(be, tol()); }

TEST_P(RoutingCuda, ScatterAddRowsAccumulatesIntoTheNamedRowsOnly) {
  check_scatter_add_rows(be, tol());
}

TEST_P(RoutingCuda, RowDotsOverwriteDeterministically) { check_row_dots(be); }

INSTANTIATE_TEST_SUITE_P(Backends, RoutingCuda, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Bf16" : "Fp32";
                         });

}  // namespace
}  // namespace loom::kernels::test
