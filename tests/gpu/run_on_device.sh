#!/usr/bin/env bash
# Runs on the device machine (see tests/gpu/make_bundle.sh): the CUDA kernel tests against the
# CPU kernels, with their results in $OUT (or ./gpu-results when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
ldd gpu-bundle/cuda_kernel_tests | grep "not found" && echo "missing libraries above"
gpu-bundle/cuda_kernel_tests --gtest_output="json:$out/cuda_kernel_tests.json" 2>&1 |
  tee "$out/cuda_kernel_tests.log" | tail -60
echo "exit status ${PIPESTATUS[0]}"
