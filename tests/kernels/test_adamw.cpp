// AdamW over three steps against a double evaluation of the update formula.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/adamw.h"

namespace loom::kernels::test {
namespace {

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay, grad_scale;
};

struct State {
  std::vector<double> params, m, v;
};

void reference_step(State& s, const std::vector<float>& grads, const Hyper& h, long step) {
  const double bias_correction1 = 1.0 - std::pow(h.beta1, step);
  const double bias_correction2 = 1.0 - std::pow(h.beta2, step);
  for (size_t i = 0; i < s.params.size(); i++) {
    const double g = grads[i] * h.grad_scale;
    s.params[i] -= h.lr * h.weight_decay * s.params[i];
    s.m[i] = h.beta1 * s.m[i] + (1.0 - h.beta1) * g;
    s.v[i] = h.beta2 * s.v[i] + (1.0 - h.beta2) * g * g;
    s.params[i] -=
        h.lr * (s.m[i] / bias_correction1) / (std::sqrt(s.v[i] / bias_correction2) + h.eps);
  }
}

TEST(AdamW, ThreeStepsMatchFormula) {
  // eps comparable to sqrt(v) and a large lr make misplaced eps, bias corrections or weight
  // decay visible well above float rounding.
  const Hyper h{0.05, 0.9, 0.95, 1e-2, 0.1, 0.5};
  const size_t n = 1037;
  std::mt19937 rng(70);
  std::vector<float> params = random_floats(rng, n);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  State want{to_double(params), std::vector<double>(n), std::vector<double>(n)};
  for (long step = 1; step <= 3; step++) {
    SCOPED_TRACE(step);
    const auto grads = random_floats(rng, n, -0.1f, 0.1f);
    cpu::adamw_update(params.data(), grads.data(), m.data(), v.data(), n, static_cast<float>(h.lr),
                      static_cast<float>(h.beta1), static_cast<float>(h.beta2),
                      static_cast<float>(h.eps), static_cast<float>(h.weight_decay), step,
                      static_cast<float>(h.grad_scale));
    // The kernel's float hyper-parameters, widened, are what the reference must use.
    const Hyper hf{static_cast<float>(h.lr),           static_cast<float>(h.beta1),
                   static_cast<float>(h.beta2),        static_cast<float>(h.eps),
                   static_cast<float>(h.weight_decay), static_cast<float>(h.grad_scale)};
    reference_step(want, grads, hf, step);
    // Scaled by each buffer's own magnitude (floor 0): m and v are far below 1.
    EXPECT_TRUE(close(params, want.params, 1e-6, 0.0));
    EXPECT_TRUE(close(m, want.m, 1e-6, 0.0));
    EXPECT_TRUE(close(v, want.v, 1e-6, 0.0));
  }
}

TEST(AdamW, ZeroGradientOnlyDecaysAndCoasts) {
  // With g = 0 at step 1 the moments stay 0, so p only shrinks by lr·wd.
  const size_t n = 5;
  std::vector<float> params = {1.0f, -2.0f, 0.5f, 0.0f, 3.0f};
  const std::vector<float> grads(n, 0.0f);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  cpu::adamw_update(params.data(), grads.data(), m.data(), v.data(), n, 0.1f, 0.9f, 0.999f, 1e-8f,
                    0.5f, 1, 1.0f);
  const float decay = static_cast<float>(1.0 - 0.1f * static_cast<double>(0.5f));
  EXPECT_EQ(params, (std::vector<float>{decay, -2.0f * decay, 0.5f * decay, 0.0f, 3.0f * decay}));
  EXPECT_EQ(m, std::vector<float>(n, 0.0f));
  EXPECT_EQ(v, std::vector<float>(n, 0.0f));
}

}  // namespace
}  // namespace loom::kernels::test
