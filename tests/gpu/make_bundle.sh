#!/usr/bin/env bash
# Builds the GPU test binaries for another machine and gathers what they need into gpu-bundle/
# (git-ignored), to carry to the device machine, which has the CUDA toolkit but not OpenBLAS or
# GoogleTest. Portable -march (x86-64-v3), its own build folder (build-gpu/).
#
#   tests/gpu/make_bundle.sh        # here
#   device run: bash tests/gpu/run_on_device.sh   (carry: gpu-bundle)
set -euo pipefail
cd "$(dirname "$0")/../.."
./run.sh --setup-only >/dev/null
cmake -S . -B build-gpu -G Ninja -DLOOM_CUDA=ON -DLOOM_MARCH=x86-64-v3 >/dev/null
cmake --build build-gpu --target cuda_kernel_tests
rm -rf gpu-bundle
mkdir -p gpu-bundle/lib
cp build-gpu/tests/kernels_cuda/cuda_kernel_tests gpu-bundle/
# Every shared library outside the CUDA toolkit and the C library, so an older distribution there
# still runs it.
ldd gpu-bundle/cuda_kernel_tests | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
  case "$lib" in
    /usr/local/cuda*|*/libc.so.*|*/libm.so.*|*/libdl.so.*|*/libpthread.so.*|*/librt.so.*) ;;
    *) cp -L "$lib" gpu-bundle/lib/ ;;
  esac
done
du -sh gpu-bundle
ls gpu-bundle/lib
