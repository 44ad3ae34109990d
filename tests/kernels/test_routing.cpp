// The routing kernels of Mixture-of-Recursions (gather_rows, scatter_add_rows, row_dots) on the
// CPU backends and the emulated device, against double-precision references
// (routing_checks.h): fp32 to rounding, bf16 to one rounding of each output.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <ostream>

#include "kernels/cpu/backend.h"
#include "kernels/emulated/backend.h"
#include "routing_checks.h"

namespace loom::kernels::test {
namespace {

struct RoutingBackend {
  const char* name;
  std::function<std::shared_ptr<const KernelBackend>()> make;
  double tol;  // of activation outputs
};
void PrintTo(const RoutingBackend& b, std::ostream* os) { *os << b.name; }

constexpr double kFp32Tolerance = 1e-6;
constexpr double kBf16Tolerance = 1.0 / 256;  // one rounding: 2⁻⁹ of the value, with room

class RoutingTest : public ::testing::TestWithParam<RoutingBackend> {};

TEST_P(RoutingTest, GatherRowsScalesTheNamedRows) {
  check_gather_rows(GetParam().make(), GetParam().tol);
}

TEST_P(RoutingTest, ScatterAddRowsAccumulatesIntoTheNamedRowsOnly) {
  check_scatter_add_rows(GetParam().make(), GetParam().tol);
}

TEST_P(RoutingTest, RowDotsOverwriteDeterministically) { check_row_dots(GetParam().make()); }

INSTANTIATE_TEST_SUITE_P(
    Backends, RoutingTest,
    ::testing::Values(
        RoutingBackend{"Cpu", [] { return cpu::make_cpu_backend(); }, kFp32Tolerance},
        RoutingBackend{"CpuBf16", [] { return cpu::make_cpu_bf16_backend(); }, kBf16Tolerance},
        RoutingBackend{"Emulated", [] { return emulated::make_emulated_backend(); },
                       kFp32Tolerance},
        RoutingBackend{"EmulatedBf16",
                       [] { return emulated::make_emulated_backend(cpu::make_cpu_bf16_backend()); },
                       kBf16Tolerance}));

}  // namespace
}  // namespace loom::kernels::test
