// The routing kernels of a KernelBackend (gather_rows, scatter_add_rows, row_dots: kernels/
// backend.h) against double-precision references on random data, through the backend's own
// memory (upload, kernel, download), for any backend: the CPU ones (tests/kernels/
// test_routing.cpp) and the GPU's (tests/kernels_cuda/test_routing.cpp) run the same checks.
// Inputs are rounded to the backend's activation type before the reference sees them, so the
// only error left is the kernel's own: `tol` bounds it for activation outputs (relative to the
// largest reference value, at least 1: see close()).
//
//   check_gather_rows(cpu::make_cpu_bf16_backend(), 1.0 / 256);
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/backend.h"
#include "kernels/cpu/bf16.h"
#include "kernels/device_array.h"

namespace loom::kernels::test {

// Row counts (none, one, a few dozen) and row lengths (C = 64 is whole 16-byte packs of fp32 and
// bf16; the others are not).
inline const std::vector<int> kRoutingRows = {0, 1, 37};
inline const std::vector<int> kRoutingColumns = {13, 45, 64};
// row_dots may sum in fp32 on any backend: C terms of magnitude ≤ 1.
inline constexpr double kRowDotsTolerance = 1e-5;

// Activations in a backend's memory, uploaded from host floats rounded to its activation type
// (fp32 or bf16); values() is what was stored, as floats.
class Activations {
 public:
  Activations(std::shared_ptr<const KernelBackend> be, std::vector<float> x)
      : be_(std::move(be)), values_(std::move(x)), memory_(be_, values_.size() * bytes()) {
    if (bf16()) {
      std::vector<uint16_t> h(values_.size());
      for (size_t i = 0; i < h.size(); ++i) {
        h[i] = cpu::bf16_from_float(values_[i]);
        values_[i] = cpu::bf16_to_float(h[i]);
      }
      memory_.upload(reinterpret_cast<const unsigned char*>(h.data()), memory_.size());
    } else {
      memory_.upload(reinterpret_cast<const unsigned char*>(values_.data()), memory_.size());
    }
  }

  void* data() { return memory_.data(); }
  const std::vector<float>& values() const { return values_; }
  std::vector<double> reference() const { return to_double(values_); }
  // The backend's contents now, after the work issued before.
  std::vector<float> download() const {
    std::vector<float> out(values_.size());
    if (bf16()) {
      std::vector<uint16_t> h(out.size());
      memory_.download(reinterpret_cast<unsigned char*>(h.data()), memory_.size());
      for (size_t i = 0; i < h.size(); ++i) out[i] = cpu::bf16_to_float(h[i]);
    } else {
      memory_.download(reinterpret_cast<unsigned char*>(out.data()), memory_.size());
    }
    return out;
  }

 private:
  size_t bytes() const { return be_->activation_bytes(); }
  bool bf16() const { return bytes() == 2; }

  std::shared_ptr<const KernelBackend> be_;
  std::vector<float> values_;
  DeviceArray<unsigned char> memory_;
};

// n row indices into m rows: uniform (repeats allowed) or, when distinct, n different rows in
// random order (n ≤ m).
inline std::vector<int> random_rows(std::mt19937& rng, int n, int m, bool distinct) {
  std::vector<int> rows(m);
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  rows.resize(n);
  if (!distinct) {
    std::uniform_int_distribution<int> dist(0, m - 1);
    for (int& r : rows) r = dist(rng);
  }
  return rows;
}

// A host vector in the backend's memory (indices, fp32 scales); null when empty.
template <class T>
DeviceArray<T> on(const std::shared_ptr<const KernelBackend>& be, const std::vector<T>& host) {
  DeviceArray<T> out(be, host.size());
  out.upload(host);
  return out;
}

inline std::string routing_case(int n, int C, bool scaled, float factor = 1.0f) {
  return "n=" + std::to_string(n) + " C=" + std::to_string(C) +
         " scale=" + (scaled ? "yes" : "null") + " factor=" + std::to_string(factor);
}

inline void check_gather_rows(const std::shared_ptr<const KernelBackend>& be, double tol) {
  std::mt19937 rng(101);
  for (int n : kRoutingRows) {
    for (int C : kRoutingColumns) {
      for (bool scaled : {false, true}) {
        SCOPED_TRACE(std::string(be->name()) + " " + routing_case(n, C, scaled));
        const int m = n + 5;  // source rows
        Activations src(be, random_floats(rng, static_cast<size_t>(m) * C));
        Activations dst(be, nan_filled(static_cast<size_t>(n) * C));  // overwritten
        const std::vector<int> rows = random_rows(rng, n, m, /*distinct=*/false);
        const std::vector<float> scale =
            scaled ? random_floats(rng, n, -2.0f, 2.0f) : std::vector<float>();
        DeviceArray<int> d_rows = on(be, rows);
        DeviceArray<float> d_scale = on(be, scale);
        be->gather_rows(dst.data(), src.data(), d_rows.data(), scaled ? d_scale.data() : nullptr, n,
                        C);
        std::vector<double> want(static_cast<size_t>(n) * C);
        for (int i = 0; i < n; ++i) {
          const double s = scaled ? scale[i] : 1.0;
          for (int c = 0; c < C; ++c) {
            want[static_cast<size_t>(i) * C + c] =
                s * src.values()[static_cast<size_t>(rows[i]) * C + c];
          }
        }
        EXPECT_TRUE(close(dst.download(), want, tol));
        // The source is read only.
        EXPECT_EQ(src.download(), src.values());
      }
    }
  }
}

inline void check_scatter_add_rows(const std::shared_ptr<const KernelBackend>& be, double tol) {
  std::mt19937 rng(102);
  for (int n : kRoutingRows) {
    for (int C : kRoutingColumns) {
      for (bool scaled : {false, true}) {
        for (float factor : {1.0f, -0.75f}) {
          SCOPED_TRACE(std::string(be->name()) + " " + routing_case(n, C, scaled, factor));
          const int m = 2 * n + 3;  // destination rows: some are not written
          Activations dst(be, random_floats(rng, static_cast<size_t>(m) * C));
          Activations src(be, random_floats(rng, static_cast<size_t>(n) * C));
          const std::vector<int> rows = random_rows(rng, n, m, /*distinct=*/true);
          const std::vector<float> scale =
              scaled ? random_floats(rng, n, -2.0f, 2.0f) : std::vector<float>();
          DeviceArray<int> d_rows = on(be, rows);
          DeviceArray<float> d_scale = on(be, scale);
          be->scatter_add_rows(dst.data(), src.data(), d_rows.data(),
                               scaled ? d_scale.data() : nullptr, factor, n, C);
          // Rows not named keep their values exactly.
          std::vector<double> want = dst.reference();
          for (int i = 0; i < n; ++i) {
            const double s = static_cast<double>(factor) * (scaled ? scale[i] : 1.0);
            for (int c = 0; c < C; ++c) {
              want[static_cast<size_t>(rows[i]) * C + c] +=
                  s * src.values()[static_cast<size_t>(i) * C + c];
            }
          }
          const std::vector<float> got = dst.download();
          EXPECT_TRUE(close(got, want, tol));
          std::vector<bool> named(m, false);
          for (int r : rows) named[r] = true;
          for (int r = 0; r < m; ++r) {
            if (named[r]) continue;
            for (int c = 0; c < C; ++c) {
              const size_t k = static_cast<size_t>(r) * C + c;
              ASSERT_EQ(got[k], dst.values()[k]) << "row " << r << " was not named";
            }
          }
        }
      }
    }
  }
}

inline void check_row_dots(const std::shared_ptr<const KernelBackend>& be) {
  std::mt19937 rng(103);
  for (int n : kRoutingRows) {
    for (int C : kRoutingColumns) {
      SCOPED_TRACE(std::string(be->name()) + " " + routing_case(n, C, false));
      const int m = n + 5;  // rows of a
      Activations a(be, random_floats(rng, static_cast<size_t>(m) * C));
      Activations b(be, random_floats(rng, static_cast<size_t>(n) * C));
      const std::vector<int> rows = random_rows(rng, n, m, /*distinct=*/false);
      DeviceArray<int> d_rows = on(be, rows);
      DeviceArray<float> out = on(be, nan_filled(n));  // overwritten
      be->row_dots(out.data(), a.data(), b.data(), d_rows.data(), n, C);
      std::vector<double> want(n, 0.0);
      for (int i = 0; i < n; ++i) {
        for (int c = 0; c < C; ++c) {
          want[i] += static_cast<double>(a.values()[static_cast<size_t>(rows[i]) * C + c]) *
                     b.values()[static_cast<size_t>(i) * C + c];
        }
      }
      const std::vector<float> got = out.download();
      EXPECT_TRUE(close(got, want, kRowDotsTolerance));
      // Deterministic: the same bits again.
      be->row_dots(out.data(), a.data(), b.data(), d_rows.data(), n, C);
      EXPECT_EQ(out.download(), got);
    }
  }
}

}  // namespace loom::kernels::test
