// Runs the CUDA kernel tests when a device is present; without one it says so and passes, as
// every GPU test does on machines without a GPU.
#include <gtest/gtest.h>

#include <cstdio>

#include "kernels/cuda/context.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (loom::kernels::cuda::device_count() == 0) {
    std::printf("skipped: no CUDA device\n");
    return 0;
  }
  return RUN_ALL_TESTS();
}
