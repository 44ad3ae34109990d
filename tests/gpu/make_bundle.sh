#!/usr/bin/env bash
# Builds what the GPU check runs, for another machine, and gathers it into gpu-bundle/
# (git-ignored), to carry to the device machine, which has the CUDA toolkit and NCCL but not
# OpenBLAS, Protobuf, Open MPI or GoogleTest: the CUDA kernel tests, the model's CUDA gradient
# tests (core_tests), `loom` with the CUDA backend, the shared libraries they need from outside
# the toolkit, and a small data set (byte tokens of Python's email package). Portable -march
# (x86-64-v3), its own build folder (build-gpu/). About 80 MiB, so it is also packed into
# gpu-bundle.tar.xz (about 12 MiB), which is what to carry.
#
#   tests/gpu/make_bundle.sh        # here
#   device run: bash tests/gpu/run_on_device.sh   (carry: gpu-bundle.tar.xz)
set -euo pipefail
cd "$(dirname "$0")/../.."
./run.sh --setup-only >/dev/null
cmake -S . -B build-gpu -G Ninja -DLOOM_CUDA=ON -DLOOM_MARCH=x86-64-v3 >/dev/null
cmake --build build-gpu --target cuda_kernel_tests core_tests loom
rm -rf gpu-bundle
mkdir -p gpu-bundle/lib
cp build-gpu/tests/kernels_cuda/cuda_kernel_tests build-gpu/tests/core_tests build-gpu/loom gpu-bundle/
# Every shared library outside the CUDA toolkit and the C library, so an older distribution there
# still runs them.
for binary in gpu-bundle/cuda_kernel_tests gpu-bundle/core_tests gpu-bundle/loom; do
  ldd "$binary" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    case "$lib" in
      /usr/local/cuda*|*/libc.so.*|*/libm.so.*|*/libdl.so.*|*/libpthread.so.*|*/librt.so.*) ;;
      *) cp -L "$lib" gpu-bundle/lib/ ;;
    esac
  done
done
email=$(ls -d /usr/lib/python3*/email | head -1)
build-gpu/loom prepare --input "$email" --ext .py --output gpu-bundle/data/pystdlib \
  --val-fraction 0.1 >/dev/null
tar -cJf gpu-bundle.tar.xz gpu-bundle
du -sh gpu-bundle gpu-bundle.tar.xz
ls gpu-bundle/lib
