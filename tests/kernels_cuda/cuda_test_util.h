// Shared helpers for the CUDA kernel tests, which run each CUDA kernel and the CPU kernel on the
// same inputs: seeded random host data, rounding host data to bf16 (so both sides see the same
// inputs), typed device buffers that upload, download and poison themselves with NaN on the
// test's stream, and comparisons by relative error norms.
//
//   class MyTest : public CudaKernelTest {};
//   DeviceBuffer<__nv_bfloat16> x(ctx, host_x);           // rounds to bf16 on upload
//   DeviceBuffer<__nv_bfloat16> y(ctx, n); y.poison();      // NaN until the kernel writes it
//   gelu_forward(ctx, y.data(), x.data(), n);
//   EXPECT_TRUE(norm_close(y.download(), reference, tolerance<__nv_bfloat16>()));
//
// All transfers are ordered on ctx.stream (a non-blocking stream, which the legacy default stream
// does not synchronise with) and download() waits for the stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/context.h"

namespace loom::kernels::cuda_test {

using loom::kernels::cuda::Context;

// The activation types every templated kernel is tested with (TYPED_TEST_SUITE).
using ActivationTypes = ::testing::Types<float, __nv_bfloat16>;

// Norm-relative tolerance of a kernel's output against the CPU kernel on the same inputs:
// fp32 differs from the CPU by rounding order only; bf16 stores rounded outputs.
template <typename T>
constexpr double tolerance() {
  return sizeof(T) == sizeof(float) ? 1e-5 : 1e-2;
}

template <typename T>
const char* type_name() {
  return sizeof(T) == sizeof(float) ? "float" : "bf16";
}

// A fixture owning one Context (device 0) per test.
class CudaKernelTest : public ::testing::Test {
 protected:
  void SetUp() override { ctx = loom::kernels::cuda::context_create(0); }
  void TearDown() override { CUDA_CHECK(cudaStreamSynchronize(ctx.stream)); }
  Context ctx;
};

// Same, for typed tests over ActivationTypes.
template <typename T>
class CudaKernelTypedTest : public CudaKernelTest {};

// ---------------------------------------------------------------------------------------------
// Host data.

// Uniform in [lo, hi).
inline std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// Uniform integers in [0, bound).
inline std::vector<int> random_ints(std::mt19937& rng, size_t n, int bound) {
  std::uniform_int_distribution<int> dist(0, bound - 1);
  std::vector<int> out(n);
  for (int& x : out) x = dist(rng);
  return out;
}

inline float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// x as the kernel of type T sees it: unchanged for float, rounded to bf16 otherwise.
template <typename T>
std::vector<float> as_type(std::vector<float> x) {
  if constexpr (!std::is_same_v<T, float>) {
    for (float& v : x) v = round_to_bf16(v);
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Device buffers of T (float, __nv_bfloat16, int, double), converted from and to host floats.

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(const Context& ctx, size_t count)
      : stream_(ctx.stream),
        count_(count),
        memory_(loom::kernels::cuda::device_alloc(count * sizeof(T))) {}
  // Uploads host (converted to T; bf16 rounds to nearest).
  template <typename H>
  DeviceBuffer(const Context& ctx, const std::vector<H>& host) : DeviceBuffer(ctx, host.size()) {
    upload(host);
  }

  T* data() { return static_cast<T*>(memory_.get()); }
  const T* data() const { return static_cast<const T*>(memory_.get()); }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  template <typename H>
  void upload(const std::vector<H>& host) {
    EXPECT_EQ(host.size(), count_);
    staging_.resize(count_);
    for (size_t i = 0; i < count_; i++) staging_[i] = convert<T>(host[i]);
    if (count_ == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(data(), staging_.data(), bytes(), cudaMemcpyHostToDevice, stream_));
    // The staging buffer must outlive the copy.
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // Every byte 0xFF: a NaN in float, double and bf16 (and −1 in int).
  void poison() {
    if (count_ > 0) CUDA_CHECK(cudaMemsetAsync(data(), 0xFF, bytes(), stream_));
  }

  // Waits for the stream, then returns the contents converted to H (float by default).
  template <typename H = float>
  std::vector<H> download() const {
    std::vector<T> raw(count_);
    if (count_ > 0) {
      CUDA_CHECK(cudaMemcpyAsync(raw.data(), data(), bytes(), cudaMemcpyDeviceToHost, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<H> out(count_);
    for (size_t i = 0; i < count_; i++) out[i] = convert<H>(raw[i]);
    return out;
  }

  // Raw bytes, for bitwise comparisons.
  std::vector<unsigned char> download_bytes() const {
    std::vector<unsigned char> raw(bytes());
    if (count_ > 0) {
      CUDA_CHECK(cudaMemcpyAsync(raw.data(), data(), bytes(), cudaMemcpyDeviceToHost, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return raw;
  }

 private:
  template <typename To, typename From>
  static To convert(From x) {
    if constexpr (std::is_same_v<To, __nv_bfloat16>) {
      return __float2bfloat16_rn(static_cast<float>(x));
    } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
      return static_cast<To>(__bfloat162float(x));
    } else {
      return static_cast<To>(x);
    }
  }

  cudaStream_t stream_;
  size_t count_;
  loom::kernels::cuda::DeviceMemory memory_;
  std::vector<T> staging_;
};

// ---------------------------------------------------------------------------------------------
// Comparisons. Each fails on any non-finite element of `got` (poisoned outputs the kernel did
// not write show up here as NaN).

inline ::testing::AssertionResult all_finite(const std::vector<float>& got) {
  for (size_t i = 0; i < got.size(); i++) {
    if (!std::isfinite(got[i])) {
      return ::testing::AssertionFailure()
             << "element " << i << " of " << got.size() << " is " << got[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// ‖got − want‖₂ / max(‖want‖₂, floor).
inline double relative_error_norm(const std::vector<float>& got, const std::vector<float>& want,
                                  double floor = 1e-30) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); i++) {
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), floor);
}

// Passes when every element is finite and relative_error_norm(got, want) ≤ tol.
inline ::testing::AssertionResult norm_close(const std::vector<float>& got,
                                             const std::vector<float>& want, double tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != reference size " << want.size();
  }
  if (auto finite = all_finite(got); !finite) return finite;
  const double error = relative_error_norm(got, want);
  if (error <= tol) return ::testing::AssertionSuccess();
  size_t worst_at = 0;
  double worst = -1.0;
  for (size_t i = 0; i < got.size(); i++) {
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (d > worst) {
      worst = d;
      worst_at = i;
    }
  }
  return ::testing::AssertionFailure()
         << "relative error norm " << error << " > " << tol << "; worst element " << worst_at
         << ": got " << got[worst_at] << ", reference " << want[worst_at];
}

// Passes when every element is finite and |got − want| ≤ tol · max(|want|, floor) elementwise.
inline ::testing::AssertionResult elementwise_close(const std::vector<float>& got,
                                                    const std::vector<float>& want, double tol,
                                                    double floor = 1e-3) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != reference size " << want.size();
  }
  if (auto finite = all_finite(got); !finite) return finite;
  for (size_t i = 0; i < got.size(); i++) {
    const double error = std::abs(static_cast<double>(got[i]) - want[i]);
    const double bound = tol * std::max(std::abs(static_cast<double>(want[i])), floor);
    if (error > bound) {
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got[i] << ", reference " << want[i] << ", error "
             << error << " > " << bound;
    }
  }
  return ::testing::AssertionSuccess();
}

// Passes when a and b are the same bytes.
inline ::testing::AssertionResult bitwise_equal(const std::vector<unsigned char>& a,
                                                const std::vector<unsigned char>& b) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  }
  for (size_t i = 0; i < a.size(); i++) {
    if (a[i] != b[i]) return ::testing::AssertionFailure() << "byte " << i << " differs";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace loom::kernels::cuda_test
