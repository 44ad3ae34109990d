// bf16 storage on the CPU (kernels/cpu/bf16.h, kernels/cpu/backend_bf16.cpp): the conversions
// round to nearest even, and every kernel of the bf16 backend, given bf16 operands, returns
// exactly the fp32 kernel's result on those operands rounded to bf16 (it converts, runs the fp32
// kernel and rounds once), with fp32 parameter gradients and statistics untouched by rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/backend.h"
#include "kernels/cpu/bf16.h"

namespace loom::kernels::cpu {
namespace {

using Half = std::vector<uint16_t>;

Half to_half(const std::vector<float>& x) {
  Half h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = bf16_from_float(x[i]);
  return h;
}
std::vector<float> to_float(const Half& h) {
  std::vector<float> x(h.size());
  for (size_t i = 0; i < h.size(); ++i) x[i] = bf16_to_float(h[i]);
  return x;
}
// Random values that bf16 holds exactly, as (fp32, bf16) pairs.
struct Operand {
  std::vector<float> f;
  Half h;
};
Operand operand(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::vector<float> x = test::random_floats(rng, n, -scale, scale);
  Operand o{{}, to_half(x)};
  o.f = to_float(o.h);
  return o;
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(bf16_from_float(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(bf16_from_float(1.0f + 1.0f / 256), 0x3F80);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
  EXPECT_EQ(bf16_from_float(1.0f + 3.0f / 256), 0x3F82);
  EXPECT_EQ(bf16_from_float(1.0f + 1.0f / 256 + 1.0f / 65536), 0x3F81);  // above half: up
  EXPECT_EQ(bf16_from_float(-2.5f), 0xC020);
  EXPECT_TRUE(std::isinf(bf16_to_float(bf16_from_float(std::numeric_limits<float>::infinity()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(bf16_from_float(std::numeric_limits<float>::quiet_NaN()))));
  // The largest finite fp32 rounds up to infinity, as IEEE rounding does.
  EXPECT_TRUE(std::isinf(bf16_to_float(bf16_from_float(std::numeric_limits<float>::max()))));
  std::vector<float> x = {0.1f, -3.75f, 1e-20f, 12345.678f};
  Half h(4);
  bf16_store(h.data(), x.data(), 4);
  std::vector<float> back(4);
  bf16_load(back.data(), h.data(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(h[i], bf16_from_float(x[i]));
    EXPECT_LE(std::fabs(back[i] - x[i]), std::fabs(x[i]) / 256) << x[i];  // 8-bit mantissa
  }
}

class Bf16Backend : public ::testing::Test {
 protected:
  std::unique_ptr<KernelBackend> f32 = make_cpu_backend(), b16 = make_cpu_bf16_backend();
  std::mt19937 rng{17};
};

TEST_F(Bf16Backend, MatmulIsTheFp32KernelRoundedOnce) {
  const int N = 7, IC = 12, OC = 9;
  Operand x = operand(rng, N * IC), w = operand(rng, OC * IC), b = operand(rng, OC),
          dout = operand(rng, N * OC);
  std::vector<float> out(N * OC);
  f32->matmul_forward(out.data(), x.f.data(), w.f.data(), b.f.data(), N, IC, OC);
  Half out_h(N * OC);
  b16->matmul_forward(out_h.data(), x.h.data(), w.h.data(), b.h.data(), N, IC, OC);
  EXPECT_EQ(out_h, to_half(out));

  std::vector<float> dinp(N * IC), dw(OC * IC, 0.5f), db(OC, 0.25f), dw16 = dw, db16 = db;
  f32->matmul_backward(dinp.data(), dw.data(), db.data(), dout.f.data(), x.f.data(), w.f.data(), N,
                       IC, OC);
  Half dinp_h(N * IC);
  b16->matmul_backward(dinp_h.data(), dw16.data(), db16.data(), dout.h.data(), x.h.data(),
                       w.h.data(), N, IC, OC);
  EXPECT_EQ(dinp_h, to_half(dinp));
  EXPECT_EQ(dw16, dw);  // fp32 gradients, accumulated without rounding
  EXPECT_EQ(db16, db);
}

TEST_F(Bf16Backend, NormsAccumulateIntoBf16InputGradients) {
  const int N = 5, C = 16;
  Operand x = operand(rng, N * C), w = operand(rng, C), b = operand(rng, C),
          dout = operand(rng, N * C), dinp0 = operand(rng, N * C, 0.1f);
  std::vector<float> out(N * C), mean(N), rstd(N), mean16(N), rstd16(N);
  f32->layernorm_forward(out.data(), mean.data(), rstd.data(), x.f.data(), w.f.data(), b.f.data(),
                         N, C, 1e-5f);
  Half out_h(N * C);
  b16->layernorm_forward(out_h.data(), mean16.data(), rstd16.data(), x.h.data(), w.h.data(),
                         b.h.data(), N, C, 1e-5f);
  EXPECT_EQ(out_h, to_half(out));
  EXPECT_EQ(mean16, mean);  // statistics stay fp32
  EXPECT_EQ(rstd16, rstd);
  std::vector<float> dinp = dinp0.f, dw(C), db(C), dw16(C), db16(C);
  f32->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.f.data(), x.f.data(), w.f.data(),
                          mean.data(), rstd.data(), N, C, nullptr);
  Half dinp_h = dinp0.h;
  b16->layernorm_backward(dinp_h.data(), dw16.data(), db16.data(), dout.h.data(), x.h.data(),
                          w.h.data(), mean.data(), rstd.data(), N, C, nullptr);
  EXPECT_EQ(dinp_h, to_half(dinp));  // dinp += in fp32, rounded once
  EXPECT_EQ(dw16, dw);
  EXPECT_EQ(db16, db);
}

TEST_F(Bf16Backend, AttentionAndGelu) {
  const int B = 2, T = 6, C = 8, H = 2;
  Operand qkv = operand(rng, B * T * 3 * C), dout = operand(rng, B * T * C);
  std::vector<char> scratch(f32->attention_scratch_bytes(B, T, C, H));
  std::vector<float> out(B * T * C), lse(B * H * T), lse16(B * H * T);
  f32->attention_forward(out.data(), lse.data(), qkv.f.data(), B, T, C, H, H, scratch.data());
  Half out_h(B * T * C);
  b16->attention_forward(out_h.data(), lse16.data(), qkv.h.data(), B, T, C, H, H, scratch.data());
  EXPECT_EQ(out_h, to_half(out));
  EXPECT_EQ(lse16, lse);
  // Backward from the bf16 forward's output (what a bf16 run saves).
  const std::vector<float> out_f = to_float(out_h);
  std::vector<float> dqkv(B * T * 3 * C);
  f32->attention_backward(dqkv.data(), dout.f.data(), qkv.f.data(), out_f.data(), lse.data(), B, T,
                          C, H, H, scratch.data());
  Half dqkv_h(B * T * 3 * C);
  b16->attention_backward(dqkv_h.data(), dout.h.data(), qkv.h.data(), out_h.data(), lse.data(), B,
                          T, C, H, H, scratch.data());
  EXPECT_EQ(dqkv_h, to_half(dqkv));

  std::vector<float> g(qkv.f.size());
  f32->gelu_forward(g.data(), qkv.f.data(), g.size());
  Half g_h = qkv.h;
  b16->gelu_forward(g_h.data(), g_h.data(), g_h.size());  // in place, as the model may
  EXPECT_EQ(g_h, to_half(g));
}

// A ring block reads strided q and kv (a packed qkv) and writes only its rows of out.
TEST_F(Bf16Backend, AttentionBlockOverAPackedQkv) {
  const int B = 2, T = 8, C = 8, H = 2;
  Operand qkv = operand(rng, B * T * 3 * C), out0 = operand(rng, B * T * C);
  AttentionBlock blk = attention_whole_sequence(B, T, C, H, H);
  blk.q_begin = 2, blk.q_rows = 4;  // rows 2–5 only: the others must come back unchanged
  std::vector<char> scratch(f32->attention_block_scratch_bytes(B, H, T, T));
  std::vector<float> out = out0.f, lse(B * H * T, 0.0f), lse16 = lse;
  f32->attention_block_forward(out.data(), lse.data(), qkv.f.data(), qkv.f.data() + C, blk,
                               scratch.data());
  Half out_h = out0.h;
  b16->attention_block_forward(out_h.data(), lse16.data(), qkv.h.data(), qkv.h.data() + C, blk,
                               scratch.data());
  EXPECT_EQ(out_h, to_half(out));
  EXPECT_EQ(lse16, lse);
}

TEST_F(Bf16Backend, EmbeddingAndLmHead) {
  const int B = 2, T = 3, C = 8, V = 11;
  Operand wte = operand(rng, V * C), wpe = operand(rng, T * C);
  const std::vector<int> tokens = {0, 3, 10, 7, 7, 2};
  std::vector<float> out(B * T * C);
  f32->embedding_forward(out.data(), tokens.data(), wte.f.data(), wpe.f.data(), B, T, C, 0, V);
  Half out_h(B * T * C);
  b16->embedding_forward(out_h.data(), tokens.data(), wte.h.data(), wpe.h.data(), B, T, C, 0, V);
  EXPECT_EQ(out_h, to_half(out));

  const int N = B * T;
  Operand x = operand(rng, N * C);
  const std::vector<int> targets = {1, 2, 3, 4, 5, 6};
  std::vector<char> scratch(f32->lm_head_scratch_bytes(4, V));
  std::vector<float> dx(N * C), dw(V * C, 0.0f), dw16 = dw;
  const double loss = f32->lm_head_cross_entropy(dx.data(), dw.data(), x.f.data(), wte.f.data(),
                                                 targets.data(), N, C, V, 0.5f, scratch.data(), 4);
  Half dx_h(N * C);
  const double loss16 =
      b16->lm_head_cross_entropy(dx_h.data(), dw16.data(), x.h.data(), wte.h.data(), targets.data(),
                                 N, C, V, 0.5f, scratch.data(), 4);
  EXPECT_EQ(loss16, loss);  // the loss is fp32 work on the same operands
  EXPECT_EQ(dx_h, to_half(dx));
  EXPECT_EQ(dw16, dw);
}

TEST_F(Bf16Backend, WeightCopyAndElementwise) {
  Operand a = operand(rng, 100), b = operand(rng, 100);
  std::vector<float> master = test::random_floats(rng, 100);
  Half copy(100);
  b16->to_activation(copy.data(), master.data(), 100);
  EXPECT_EQ(copy, to_half(master));
  std::vector<float> back(100);
  b16->from_activation(back.data(), copy.data(), 100);
  EXPECT_EQ(back, to_float(copy));
  Half y = a.h;
  b16->vector_add(y.data(), b.h.data(), 100);
  std::vector<float> sum(100);
  for (int i = 0; i < 100; ++i) sum[i] = a.f[i] + b.f[i];
  EXPECT_EQ(y, to_half(sum));
  EXPECT_EQ(b16->activation_bytes(), 2u);
}

}  // namespace
}  // namespace loom::kernels::cpu
