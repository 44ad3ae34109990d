#!/usr/bin/env bash
# The GPU check, on the device machine (one H100/H200; bring gpu-bundle.tar.xz or gpu-bundle/
# from tests/gpu/make_bundle.sh, or run this where the build dependencies are installed and it
# makes the bundle first). Under 8 minutes. Writes its logs and summary.txt to $OUT (or ./gpu-results):
#   1. the CUDA kernel tests (every kernel against the CPU's) and the model's gradients on CUDA
#      against finite differences;
#   2. loom bench step on the GPT-2-small shape (configs/bench_gpt2_small.textproto) on CUDA in
#      FP32 and BF16: ms/step, tokens/s and MFU (model FLOPs ÷ the GPU's dense peak);
#   3. loom train on that shape, byte data: 20 steps on CUDA in FP32 and in BF16, 3 steps on the
#      CPU; the first 3 losses of CUDA FP32 must equal the CPU's within 1e-3 relative (the same
#      math, summed in another order by other GEMMs), and BF16's step-20 loss CUDA FP32's within
#      2 % (the bound issue 21 sets for bf16 training).
# Exits 1 when any part fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-results}
mkdir -p "$out"
[ -x gpu-bundle/loom ] || [ ! -f gpu-bundle.tar.xz ] || tar -xJf gpu-bundle.tar.xz
[ -x gpu-bundle/loom ] || bash tests/gpu/make_bundle.sh || { echo "no gpu-bundle/ and it cannot be built here"; exit 1; }
export LD_LIBRARY_PATH="$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
loom=gpu-bundle/loom
summary="$out/summary.txt"
: >"$summary"
status=0
say() { echo "$*" | tee -a "$summary"; }
fail() { say "FAIL: $*"; status=1; }

command -v python3 >/dev/null || fail "python3 is missing here: MFU and the loss comparison need it"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
say "gpu: $gpu ($(nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader | head -1))"
ldd $loom gpu-bundle/cuda_kernel_tests | grep "not found" && fail "libraries missing (above)"

# 1. kernels
gpu-bundle/cuda_kernel_tests --gtest_output="json:$out/cuda_kernel_tests.json" >"$out/cuda_kernel_tests.log" 2>&1
kernels_rc=$?
say "cuda kernel tests: $(grep -E '^\[  (PASSED|FAILED) ' "$out/cuda_kernel_tests.log" | tr '\n' ' ')(exit $kernels_rc)"
[ $kernels_rc -eq 0 ] || fail "cuda kernel tests"

# The whole model's gradient on the GPU against finite differences (tests/core/test_model_gradients.cpp).
gpu-bundle/core_tests --gtest_filter='ModelGradients.Cuda*' >"$out/model_gradients.log" 2>&1
model_rc=$?
say "model gradients on CUDA: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/model_gradients.log" | tr '\n' ' ')(exit $model_rc)"
[ $model_rc -eq 0 ] || fail "model gradients on CUDA"

# Dense peak of the GPU, TFLOP/s (bf16 tensor cores; fp32 without TF32, as loom's GEMMs run).
case "$gpu" in
  *H100*|*H200*) peak_bf16=989; peak_fp32=67 ;;
  *A100*) peak_bf16=312; peak_fp32=19.5 ;;
  *) peak_bf16=0; peak_fp32=0 ;;
esac

# 2. step time and MFU
for precision in FP32 BF16; do
  json=$($loom bench step configs/bench_gpt2_small.textproto --set runtime.device=CUDA \
    --set runtime.precision=$precision --steps 10 --warmup 3 --json 2>"$out/bench_$precision.err")
  if [ -z "$json" ]; then fail "bench step $precision: $(tail -3 "$out/bench_$precision.err")"; continue; fi
  echo "$json" >"$out/bench_$precision.json"
  peak=$([ $precision = BF16 ] && echo $peak_bf16 || echo $peak_fp32)
  python3 - "$json" "$precision" "$peak" <<'PY' | tee -a "$summary"
import json, sys
r, precision, peak = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
tflops = r["flops_per_step"] / (r["ms_per_step"] / 1e3) / 1e12
mfu = f"{100 * tflops / peak:.1f} % of {peak:g}" if peak else "unknown peak"
print(f"bench step CUDA {precision}: {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:.0f} tokens/s, "
      f"{tflops:.1f} TFLOP/s = MFU {mfu} TFLOP/s")
PY
done

# 3. training, CUDA against the CPU
data="data { train_shards: \"$PWD/gpu-bundle/data/pystdlib/train_*.bin\" val_shards: \"$PWD/gpu-bundle/data/pystdlib/val_*.bin\" }"  # a config's data paths are relative to its own folder
train() {  # train NAME DEVICE PRECISION STEPS
  local dir="$out/run-$1"
  rm -rf "$dir"
  { cat configs/bench_gpt2_small.textproto; echo "$data"; echo "logging { interval: 1 sample_tokens: 0 }"; } >"$out/gpt2_small.textproto"
  $loom train "$out/gpt2_small.textproto" --set runtime.device=$2 --set runtime.precision=$3 \
    --set train.steps=$4 --set train.eval_interval=0 --set optim.lr=6e-4 --set optim.warmup_steps=2 --run-dir "$dir" \
    >"$out/train-$1.log" 2>&1 || { fail "train $1: $(tail -3 "$out/train-$1.log")"; return 1; }
}
train cuda-fp32 CUDA FP32 20
train cuda-bf16 CUDA BF16 20
train cpu-fp32 CPU FP32 3
python3 - "$out" <<'PY' | tee -a "$summary"
import json, os, sys
out = sys.argv[1]
def rows(name):
    path = os.path.join(out, f"run-{name}", "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []
fp32, bf16, cpu = rows("cuda-fp32"), rows("cuda-bf16"), rows("cpu-fp32")
ok = True
for name, r in (("CUDA FP32", fp32), ("CUDA BF16", bf16), ("CPU FP32", cpu)):
    if not r:
        print(f"FAIL: no metrics from {name}"); ok = False; continue
    later = r[1:] or r
    tps = sorted(x["tokens_per_s"] for x in later)[len(later) // 2]
    first = " ".join("%.5f" % x["loss"] for x in r[:3])
    print(f"train {name}: {len(r)} steps, losses {first} ... {r[-1]['loss']:.5f}; "
          f"median {tps:.0f} tokens/s")
if fp32 and cpu:
    worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(fp32[:3], cpu[:3]))
    print(f"{'ok' if worst <= 1e-3 else 'FAIL'}: CUDA FP32 against CPU FP32, first 3 losses, "
          f"largest relative difference {worst:.2e} (bound 1e-3)")
    ok &= worst <= 1e-3
if fp32 and bf16:
    diff = abs(bf16[-1]["loss"] - fp32[-1]["loss"]) / fp32[-1]["loss"]
    print(f"{'ok' if diff <= 0.02 else 'FAIL'}: CUDA BF16 against CUDA FP32 at step {len(fp32)}, "
          f"relative difference {diff:.2e} (bound 2e-2)")
    ok &= diff <= 0.02
sys.exit(0 if ok else 1)
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
say "status: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
