// Rotary position embedding on the GPU against the CPU kernels on the same inputs.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/rope.h"

namespace loom::kernels::cuda_test {
namespace {

namespace cpu = loom::kernels::cpu;
namespace gpu = loom::kernels::cuda;

constexpr float kTheta = 10000.0f;

class RopeTableCuda : public CudaKernelTest {};

TEST_F(RopeTableCuda, MatchesCpuTable) {
  for (int T : {1, 7, 2048}) {
    for (int hd : {2, 12, 64, 128}) {
      // Tables from position 0, and from a later one (a sequence-parallel rank's rows).
      const int first = T == 7 ? 4093 : 0;
      SCOPED_TRACE("T=" + std::to_string(T) + " hd=" + std::to_string(hd));
      const size_t size = static_cast<size_t>(T) * (hd / 2);
      std::vector<float> want_cos(size), want_sin(size);
      cpu::rope_table(want_cos.data(), want_sin.data(), T, hd, kTheta, first);
      DeviceBuffer<float> d_cos(ctx, size), d_sin(ctx, size);
      d_cos.poison();
      d_sin.poison();
      gpu::rope_table(ctx, d_cos.data(), d_sin.data(), T, hd, kTheta, first);
      // Both are double evaluations rounded to float: at most an ulp apart.
      EXPECT_TRUE(elementwise_close(d_cos.download(), want_cos, 1e-6, 1.0));
      EXPECT_TRUE(elementwise_close(d_sin.download(), want_sin, 1e-6, 1.0));
    }
  }
}

struct RopeShape {
  int B, T, C, H;
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
           " H=" + std::to_string(H);
  }
};

// Half head dims 4, 12, 32, 6, 1: packs for both types only at 32; for fp32 also at 4 and 12.
const std::vector<RopeShape> kShapes = {
    {1, 1, 8, 1}, {2, 7, 48, 2}, {2, 33, 256, 4}, {1, 5, 36, 3}, {3, 9, 6, 3}, {2, 64, 768, 12},
};

template <typename T>
class RopeCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(RopeCuda, ActivationTypes);

TYPED_TEST(RopeCuda, ApplyAndInverseMatchCpu) {
  using T = TypeParam;
  for (const RopeShape& s : kShapes) {
    for (bool inverse : {false, true}) {
      SCOPED_TRACE(s.name() + (inverse ? " inverse" : " forward"));
      std::mt19937 rng(s.B + s.T * 3 + s.C * 5 + s.H * 7 + inverse);
      const int hd = s.C / s.H;
      const int table_rows = s.T + 3;  // tables may have more rows than T
      std::vector<float> cos_table(static_cast<size_t>(table_rows) * (hd / 2));
      std::vector<float> sin_table(cos_table.size());
      cpu::rope_table(cos_table.data(), sin_table.data(), table_rows, hd, kTheta);
      const size_t size = static_cast<size_t>(s.B) * s.T * 3 * s.C;
      const std::vector<float> qkv = as_type<T>(random_floats(rng, size));
      std::vector<float> want = qkv;
      cpu::rope_apply(want.data(), cos_table.data(), sin_table.data(), s.B, s.T, s.C, s.H, s.H,
                      inverse);
      DeviceBuffer<float> d_cos(this->ctx, cos_table), d_sin(this->ctx, sin_table);
      DeviceBuffer<T> d_qkv(this->ctx, qkv);
      gpu::rope_apply(this->ctx, d_qkv.data(), d_cos.data(), d_sin.data(), s.B, s.T, s.C, s.H, s.H,
                      inverse);
      const std::vector<float> got = d_qkv.download();
      EXPECT_TRUE(norm_close(got, want, tolerance<T>()));
      // v is untouched, bit for bit.
      for (size_t bt = 0; bt < static_cast<size_t>(s.B) * s.T; bt++) {
        for (int c = 2 * s.C; c < 3 * s.C; c++) {
          ASSERT_EQ(got[bt * 3 * s.C + c], qkv[bt * 3 * s.C + c]) << "row " << bt << " col " << c;
        }
      }
    }
  }
}

TYPED_TEST(RopeCuda, InverseUndoesForward) {
  using T = TypeParam;
  const RopeShape s{2, 50, 128, 2};
  std::mt19937 rng(17);
  const int hd = s.C / s.H;
  DeviceBuffer<float> d_cos(this->ctx, static_cast<size_t>(s.T) * (hd / 2));
  DeviceBuffer<float> d_sin(this->ctx, d_cos.size());
  gpu::rope_table(this->ctx, d_cos.data(), d_sin.data(), s.T, hd, kTheta);
  const std::vector<float> qkv =
      as_type<T>(random_floats(rng, static_cast<size_t>(s.B) * s.T * 3 * s.C));
  DeviceBuffer<T> d_qkv(this->ctx, qkv);
  gpu::rope_apply(this->ctx, d_qkv.data(), d_cos.data(), d_sin.data(), s.B, s.T, s.C, s.H, s.H,
                  false);
  gpu::rope_apply(this->ctx, d_qkv.data(), d_cos.data(), d_sin.data(), s.B, s.T, s.C, s.H, s.H,
                  true);
  // bf16 rounds after each rotation.
  EXPECT_TRUE(norm_close(d_qkv.download(), qkv, sizeof(T) == 4 ? 1e-6 : 1e-2));
}

}  // namespace
}  // namespace loom::kernels::cuda_test
