// Token and position embedding on the GPU against the CPU kernels on the same inputs.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cuda/embedding.h"

namespace loom::kernels::cuda_test {
namespace {

namespace cpu = loom::kernels::cpu;
namespace gpu = loom::kernels::cuda;

struct EmbeddingShape {
  int B, T, C, V;
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
           " V=" + std::to_string(V);
  }
};

// Small V makes long runs of one token that cross many 32-row chunks of the backward; V = 1 is
// a single run over everything; large V leaves most tokens alone in their chunk. C = 37 and 300
// are not multiples of the pack widths, 300 spans three column tiles.
const std::vector<EmbeddingShape> kShapes = {
    {1, 1, 1, 3},   {1, 1, 8, 5},     {2, 5, 37, 11},     {4, 100, 16, 3},
    {3, 70, 40, 1}, {4, 64, 128, 50}, {2, 33, 300, 1000}, {8, 128, 64, 5000},
};

template <typename T>
class EmbeddingCuda : public CudaKernelTest {};
TYPED_TEST_SUITE(EmbeddingCuda, ActivationTypes);

TYPED_TEST(EmbeddingCuda, ForwardMatchesCpuWithAndWithoutPositions) {
  using T = TypeParam;
  for (const EmbeddingShape& s : kShapes) {
    for (bool positions : {true, false}) {
      SCOPED_TRACE(s.name() + (positions ? " with wpe" : " without wpe"));
      std::mt19937 rng(s.B * 7 + s.T * 13 + s.C + s.V);
      const size_t size = static_cast<size_t>(s.B) * s.T * s.C;
      const std::vector<int> tokens = random_ints(rng, static_cast<size_t>(s.B) * s.T, s.V);
      const std::vector<float> wte = as_type<T>(random_floats(rng, static_cast<size_t>(s.V) * s.C));
      const std::vector<float> wpe = as_type<T>(random_floats(rng, static_cast<size_t>(s.T) * s.C));
      std::vector<float> want(size);
      cpu::embedding_forward(want.data(), tokens.data(), wte.data(),
                             positions ? wpe.data() : nullptr, s.B, s.T, s.C, 0, s.V);
      DeviceBuffer<int> d_tokens(this->ctx, tokens);
      DeviceBuffer<T> d_wte(this->ctx, wte), d_wpe(this->ctx, wpe);
      DeviceBuffer<T> d_out(this->ctx, size);
      d_out.poison();
      gpu::embedding_forward(this->ctx, d_out.data(), d_tokens.data(), d_wte.data(),
                             positions ? d_wpe.data() : nullptr, s.B, s.T, s.C, 0, s.V);
      EXPECT_TRUE(norm_close(d_out.download(), want, tolerance<T>()));
    }
  }
}

TYPED_TEST(EmbeddingCuda, BackwardAccumulatesLikeCpuAndIsDeterministic) {
  using T = TypeParam;
  for (const EmbeddingShape& s : kShapes) {
    for (bool positions : {true, false}) {
      SCOPED_TRACE(s.name() + (positions ? " with dwpe" : " without dwpe"));
      std::mt19937 rng(s.B * 7 + s.T * 13 + s.C + s.V + 1);
      const size_t size = static_cast<size_t>(s.B) * s.T * s.C;
      const std::vector<int> tokens = random_ints(rng, static_cast<size_t>(s.B) * s.T, s.V);
      const std::vector<float> dout = as_type<T>(random_floats(rng, size));
      // Non-zero prefills: both gradients are accumulated.
      const std::vector<float> dwte0 = random_floats(rng, static_cast<size_t>(s.V) * s.C);
      const std::vector<float> dwpe0 = random_floats(rng, static_cast<size_t>(s.T) * s.C);
      std::vector<float> want_dwte = dwte0, want_dwpe = dwpe0;
      cpu::embedding_backward(want_dwte.data(), positions ? want_dwpe.data() : nullptr, dout.data(),
                              tokens.data(), s.B, s.T, s.C, 0, s.V);

      gpu::DeviceMemory scratch =
          gpu::device_alloc(gpu::embedding_backward_scratch_bytes(s.B, s.T, s.C));
      DeviceBuffer<int> d_tokens(this->ctx, tokens);
      DeviceBuffer<T> d_dout(this->ctx, dout);
      DeviceBuffer<float> d_dwte(this->ctx, dwte0), d_dwpe(this->ctx, dwpe0);
      auto run = [&] {
        d_dwte.upload(dwte0);
        d_dwpe.upload(dwpe0);
        gpu::embedding_backward(this->ctx, d_dwte.data(), positions ? d_dwpe.data() : nullptr,
                                d_dout.data(), d_tokens.data(), s.B, s.T, s.C, 0, s.V,
                                scratch.get());
      };
      run();
      // Both sides sum the same (rounded) dout values in fp32; only the order differs.
      EXPECT_TRUE(norm_close(d_dwte.download(), want_dwte, 1e-5));
      EXPECT_TRUE(norm_close(d_dwpe.download(), want_dwpe, 1e-5));
      const auto first_dwte = d_dwte.download_bytes();
      const auto first_dwpe = d_dwpe.download_bytes();
      run();
      EXPECT_TRUE(bitwise_equal(d_dwte.download_bytes(), first_dwte));
      EXPECT_TRUE(bitwise_equal(d_dwpe.download_bytes(), first_dwpe));
    }
  }
}

// A tensor-parallel rank's slice of the vocabulary (rows [V/3, V/3 + ⌈V/2⌉), past V as padding):
// tokens outside look up zeros and leave dwte alone; forward and backward against the CPU kernel
// with the same range.
TYPED_TEST(EmbeddingCuda, VocabularySliceMatchesCpu) {
  using T = TypeParam;
  for (const EmbeddingShape& s : kShapes) {
    SCOPED_TRACE(s.name());
    const int begin = s.V / 3, rows = (s.V + 1) / 2;
    std::mt19937 rng(s.B * 7 + s.T * 13 + s.C + s.V + 2);
    const size_t size = static_cast<size_t>(s.B) * s.T * s.C;
    const std::vector<int> tokens = random_ints(rng, static_cast<size_t>(s.B) * s.T, s.V);
    const std::vector<float> wte = as_type<T>(random_floats(rng, static_cast<size_t>(rows) * s.C));
    const std::vector<float> wpe = as_type<T>(random_floats(rng, static_cast<size_t>(s.T) * s.C));
    const std::vector<float> dout = as_type<T>(random_floats(rng, size));
    const std::vector<float> dwte0 = random_floats(rng, static_cast<size_t>(rows) * s.C);
    std::vector<float> want(size), want_dwte = dwte0;
    cpu::embedding_forward(want.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C,
                           begin, rows);
    cpu::embedding_backward(want_dwte.data(), nullptr, dout.data(), tokens.data(), s.B, s.T, s.C,
                            begin, rows);
    DeviceBuffer<int> d_tokens(this->ctx, tokens);
    DeviceBuffer<T> d_wte(this->ctx, wte), d_wpe(this->ctx, wpe), d_dout(this->ctx, dout);
    DeviceBuffer<T> d_out(this->ctx, size);
    DeviceBuffer<float> d_dwte(this->ctx, dwte0);
    d_out.poison();
    gpu::embedding_forward(this->ctx, d_out.data(), d_tokens.data(), d_wte.data(), d_wpe.data(),
                           s.B, s.T, s.C, begin, rows);
    EXPECT_TRUE(norm_close(d_out.download(), want, tolerance<T>()));
    gpu::DeviceMemory scratch =
        gpu::device_alloc(gpu::embedding_backward_scratch_bytes(s.B, s.T, s.C));
    gpu::embedding_backward(this->ctx, d_dwte.data(), static_cast<float*>(nullptr),
                            d_dout.data(), d_tokens.data(), s.B, s.T, s.C, begin, rows,
                            scratch.get());
    EXPECT_TRUE(norm_close(d_dwte.download(), want_dwte, 1e-5));
  }
}

// Rows that no token selects keep their prefilled value exactly.
class EmbeddingRowsCuda : public CudaKernelTest {};

TEST_F(EmbeddingRowsCuda, BackwardLeavesUnusedRowsUntouched) {
  const int B = 2, T = 40, C = 24, V = 9;
  std::vector<int> tokens(B * T);
  for (int i = 0; i < B * T; i++) tokens[i] = (i % 2 == 0) ? 2 : 7;  // rows 2 and 7 only
  std::mt19937 rng(5);
  const std::vector<float> dout = random_floats(rng, static_cast<size_t>(B) * T * C);
  const std::vector<float> dwte0 = random_floats(rng, static_cast<size_t>(V) * C);
  gpu::DeviceMemory scratch = gpu::device_alloc(gpu::embedding_backward_scratch_bytes(B, T, C));
  DeviceBuffer<int> d_tokens(ctx, tokens);
  DeviceBuffer<float> d_dout(ctx, dout), d_dwte(ctx, dwte0);
  gpu::embedding_backward(ctx, d_dwte.data(), static_cast<float*>(nullptr), d_dout.data(),
                          d_tokens.data(), B, T, C, 0, V, scratch.get());
  const std::vector<float> got = d_dwte.download();
  std::vector<float> want = dwte0;
  cpu::embedding_backward(want.data(), nullptr, dout.data(), tokens.data(), B, T, C, 0, V);
  EXPECT_TRUE(norm_close(got, want, 1e-5));
  for (int v = 0; v < V; v++) {
    if (v == 2 || v == 7) continue;
    for (int c = 0; c < C; c++) {
      ASSERT_EQ(got[v * C + c], dwte0[v * C + c]) << "row " << v << " column " << c;
    }
  }
}

}  // namespace
}  // namespace loom::kernels::cuda_test
