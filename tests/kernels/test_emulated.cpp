// The emulated device (kernels/emulated/backend.h): its kernels give the CPU backend's results
// through upload/download, run in issue order and asynchronously, memory is freed only after the
// work that uses it, and (under AddressSanitizer) a host read of its memory is caught unless the
// memory is lent to the host.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/cpu/backend.h"
#include "kernels/device_array.h"
#include "kernels/emulated/backend.h"

#if defined(__SANITIZE_ADDRESS__)
#define LOOM_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOOM_TEST_ASAN 1
#endif
#endif
#ifdef LOOM_TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace loom::kernels {
namespace {

TEST(EmulatedDevice, KernelsMatchTheCpuBackendThroughUploadAndDownload) {
  const std::shared_ptr<KernelBackend> emu = emulated::make_emulated_backend();
  const std::shared_ptr<KernelBackend> cpu = cpu::make_cpu_backend();
  std::mt19937 rng(3);
  const int N = 6, IC = 5, OC = 7;
  const std::vector<float> x = test::random_floats(rng, N * IC), w = test::random_floats(rng, OC * IC),
                           b = test::random_floats(rng, OC);
  // The CPU backend's memory is the host's: its results are the reference.
  std::vector<float> want(N * OC);
  cpu->matmul_forward(want.data(), x.data(), w.data(), b.data(), N, IC, OC);
  cpu->gelu_forward(want.data(), want.data(), want.size());

  DeviceArray<float> dx(emu, x.size()), dw(emu, w.size()), db(emu, b.size()), out(emu, want.size());
  dx.upload(x);
  dw.upload(w);
  db.upload(b);
  emu->matmul_forward(out.data(), dx.data(), dw.data(), db.data(), N, IC, OC);
  emu->gelu_forward(out.data(), out.data(), want.size());  // queued behind the matmul
  EXPECT_EQ(out.download(), want);
  // Only the CPU's memory may be used in place (checkpoints read and write it so).
  EXPECT_EQ(out.host_data(), nullptr);
  DeviceArray<float> host_memory(cpu, 4);
  EXPECT_EQ(host_memory.host_data(), host_memory.data());
  EXPECT_DOUBLE_EQ(emu->sum_squares(out.data(), want.size()),
                   cpu->sum_squares(want.data(), want.size()));
}

TEST(EmulatedDevice, ManyQueuedKernelsRunInIssueOrder) {
  const std::shared_ptr<KernelBackend> emu = emulated::make_emulated_backend();
  const size_t n = 4096;
  DeviceArray<float> y(emu, n), one(emu, n);
  one.upload(std::vector<float>(n, 1.0f));
  // Each add reads the previous one's result: any reordering or a missed wait changes the sum.
  for (int i = 0; i < 200; ++i) emu->vector_add(y.data(), one.data(), n);
  emu->copy_bytes(one.data(), y.data(), n * sizeof(float));
  emu->zero_bytes(y.data(), n * sizeof(float));
  EXPECT_EQ(one.download(), std::vector<float>(n, 200.0f));
  EXPECT_EQ(y.download(), std::vector<float>(n, 0.0f));
}

TEST(EmulatedDevice, AdamWIsTheCpuKernels) {
  const std::shared_ptr<KernelBackend> emu = emulated::make_emulated_backend();
  const std::shared_ptr<KernelBackend> cpu = cpu::make_cpu_backend();
  std::mt19937 rng(5);
  std::vector<float> p = test::random_floats(rng, 100), g = test::random_floats(rng, 100),
                     m(100, 0.0f), v(100, 0.0f);
  DeviceArray<float> dp(emu, 100), dg(emu, 100), dm(emu, 100), dv(emu, 100);
  dp.upload(p);
  dg.upload(g);
  for (long step = 1; step <= 3; ++step) {
    cpu->adamw_update(p.data(), g.data(), m.data(), v.data(), 100, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                      step, 0.5f);
    emu->adamw_update(dp.data(), dg.data(), dm.data(), dv.data(), 100, 1e-2f, 0.9f, 0.95f, 1e-8f,
                      0.1f, step, 0.5f);
  }
  EXPECT_EQ(dp.download(), p);
  EXPECT_EQ(dm.download(), m);
  EXPECT_EQ(dv.download(), v);
}

TEST(EmulatedDevice, FreeingWaitsForTheWorkThatUsesTheMemory) {
  const std::shared_ptr<KernelBackend> emu = emulated::make_emulated_backend();
  const size_t n = 1 << 16;
  DeviceArray<float> keep(emu, n);
  {
    DeviceArray<float> scratch(emu, n);
    for (int i = 0; i < 20; ++i) emu->gelu_forward(scratch.data(), scratch.data(), n);
    emu->copy_bytes(keep.data(), scratch.data(), n * sizeof(float));
  }  // freed here: after the queued kernels, not under them
  EXPECT_EQ(keep.download(), std::vector<float>(n, 0.0f));
}

// Under AddressSanitizer the device's memory is poisoned while the device is idle and not lent:
// the host reading it directly, as a missing download would, is reported.
TEST(EmulatedDeviceDeathTest, HostReadOfDeviceMemoryIsCaught) {
  if (!emulated::poisons_memory())
    GTEST_SKIP() << "this build has no AddressSanitizer, so device memory is not poisoned "
                    "(tests/sanitize.sh runs this test under it)";
#ifdef LOOM_TEST_ASAN
  const std::shared_ptr<KernelBackend> emu = emulated::make_emulated_backend();
  DeviceArray<float> x(emu, 64);
  x.upload(std::vector<float>(64, 2.0f));
  EXPECT_TRUE(__asan_address_is_poisoned(x.data()));
  EXPECT_DEATH(
      {
        volatile float host_read = x.data()[3];
        (void)host_read;
      },
      "use-after-poison");
  {  // lent to a transport (MPI): open to the host until the lend is released
    std::shared_ptr<void> lend = emu->lend_to_host();
    EXPECT_FALSE(__asan_address_is_poisoned(x.data()));
    EXPECT_EQ(x.data()[3], 2.0f);
  }
  EXPECT_TRUE(__asan_address_is_poisoned(x.data() + 63));
#endif
}

}  // namespace
}  // namespace loom::kernels
