#!/usr/bin/env bash
# Sanitizers and fuzzing (run by .ci/run after ./test.sh), in build trees of their own (clang, no
# CUDA), every finding fatal:
#  - build-sanitize, AddressSanitizer + UndefinedBehaviorSanitizer: the unit tests, two-rank
#    training runs (ZeRO-1, recomputation, a checkpoint, resumes at dp 2 and tp 2), the same on
#    the emulated device at dp × tp, pp and sp, in fp32 and bf16 (its memory poisoned whenever
#    the host may not touch it, so a host read of device memory anywhere in the run is fatal),
#    the five layout-equivalence tests and the bf16 one on the emulated device, then each
#    libFuzzer target (tests/fuzz) for FUZZ_SECONDS (default 30) from its seed corpus, with
#    libFuzzer's -seed=FUZZ_SEED (default 1, so CI repeats its inputs; 0 = a new seed). A crash a
#    fuzzer finds is saved under build-sanitize/fuzz-crashes/ and fails the script; add it to the
#    target's corpus once fixed, as a regression test.
#  - build-tsan, ThreadSanitizer: the communicator tests (the MPI progress thread, async work
#    handles) under mpirun with 2 and 4 ranks, and training on the emulated device (its stream is
#    a worker thread: a host access without the synchronisation a GPU needs is a race) in one
#    process and in bf16 at dp 2 × tp 2, and the same equivalence tests on the emulated device
#    as under ASan; tests/tsan.supp silences Open MPI's internals only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
fuzz_seed=${FUZZ_SEED:-1}
build=build-sanitize
started=$SECONDS
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DLOOM_CUDA=OFF -DLOOM_SANITIZE=address,undefined -DLOOM_FUZZ=ON \
  >/dev/null
cmake --build "$build" -j "$(nproc)" --target core_tests kernel_tests parallel_unit_tests loom \
  fuzz_config fuzz_shard fuzz_checkpoint_meta fuzz_safetensors
echo "sanitize: built in $((SECONDS - started)) s"

# MPI and OpenBLAS keep allocations for the process's life: leaks are not findings here.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_WAIT_POLICY=PASSIVE
step=$SECONDS
# SentencePiece is loaded with RTLD_DEEPBIND (its own protobuf), which the sanitizer runtimes
# refuse; its tests run in the normal build only.
"$build/tests/core_tests" --gtest_brief=1 --gtest_filter=-*SentencePiece*
"$build/tests/kernels/kernel_tests" --gtest_brief=1
"$build/tests/parallel/parallel_unit_tests" --gtest_brief=1 --gtest_filter=-*DeathTest*
echo "sanitize: unit tests in $((SECONDS - step)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step=$SECONDS
loom=$PWD/$build/loom
run=(train "$PWD/configs/default.textproto" --set model.d_model=32 --set model.n_heads=2
     --set model.d_mlp=64 --set train.seq_len=32 --set train.micro_batch=2
     --set train.global_batch=8 --set train.eval_interval=2 --set train.eval_batches=1
     --set checkpoint.interval=2 --set logging.sample_tokens=16 --set runtime.threads=1
     --set optim.warmup_steps=0 --set optim.lr=1e-2  # learns enough in 3 steps to sample
     --set parallel.dp=2 --set parallel.zero_stage=1 --set train.recompute=SQRT
     --set "data.train_shards=data/train_*.bin" --set "data.val_shards=data/val_*.bin")
(
  cd "$work"
  "$loom" prepare --input "$OLDPWD/core" --output data >/dev/null
  "$loom" "${run[@]}" --set train.steps=3 --run-dir run
  "$loom" "${run[@]}" --set train.steps=4 --run-dir run --resume
  "$loom" "${run[@]}" --set parallel.dp=1 --set parallel.tp=2 --set train.steps=5 --run-dir run --resume
  emulated=("${run[@]}" --set runtime.device=EMULATED --set train.steps=3)
  "$loom" "${emulated[@]}" --set parallel.tp=2 --run-dir emulated-dp-tp
  "$loom" "${emulated[@]}" --set train.steps=4 --run-dir emulated-dp-tp --resume
  "$loom" "${emulated[@]}" --set parallel.dp=1 --set parallel.pp=2 --run-dir emulated-pp
  "$loom" "${emulated[@]}" --set parallel.dp=1 --set parallel.sp=2 --run-dir emulated-sp
  "$loom" "${emulated[@]}" --set runtime.precision=BF16 --set parallel.tp=2 --run-dir emulated-bf16-dp-tp
  "$loom" "${emulated[@]}" --set runtime.precision=BF16 --set parallel.dp=1 --set parallel.pp=2 \
    --set parallel.sp=2 --run-dir emulated-bf16-pp-sp
)
echo "sanitize: multi-rank runs in $((SECONDS - step)) s"
# Every layout-equivalence test on the emulated device with this build (dp with ZeRO-1, tp and
# the ladder, pp schedules, sp, 4-D layouts, recomputation and truncated backprop): a host
# access to device memory anywhere in them is fatal.
step=$SECONDS
# equivalence_on_emulated LOOM SANITIZER: the five equivalence tests on the emulated device
# and bf16 against fp32 (precision_equivalence, emulated at dp × tp, pp and sp) with that build.
equivalence_on_emulated() {
  for kind in dp tp pp sp recompute precision; do
    local device=(--device EMULATED)
    [ "$kind" = precision ] && device=()
    python3 tests/parallel/${kind}_equivalence.py "$1" "$PWD" "${device[@]}" >"$work/$kind.log" 2>&1 || {
      tail -40 "$work/$kind.log"
      echo "sanitize: ${kind}_equivalence on EMULATED failed under $2"
      exit 1
    }
  done
}
equivalence_on_emulated "$loom" AddressSanitizer
echo "sanitize: equivalence tests on EMULATED under ASan+UBSan in $((SECONDS - step)) s"

mkdir -p "$build/fuzz-crashes"
for target in config shard checkpoint_meta safetensors; do
  corpus="$work/corpus-$target"
  cp -r "tests/fuzz/corpus/$target" "$corpus"
  "$build/tests/fuzz/fuzz_$target" "$corpus" -max_total_time="$seconds" -seed="$fuzz_seed" -timeout=10 \
    -rss_limit_mb=3072 -print_final_stats=1 -artifact_prefix="$build/fuzz-crashes/$target-" \
    2>"$work/fuzz-$target.log" || {
      tail -40 "$work/fuzz-$target.log"
      echo "sanitize: fuzz_$target found a crash (saved in $build/fuzz-crashes/)"
      exit 1
    }
  echo "sanitize: fuzz_$target: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$work/fuzz-$target.log" | grep -o '[0-9]*$') inputs in $seconds s, no crash"
done
step=$SECONDS
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DLOOM_CUDA=OFF -DLOOM_SANITIZE=thread >/dev/null
cmake --build build-tsan -j "$(nproc)" --target parallel_tests loom
export TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp halt_on_error=1 ignore_noninstrumented_modules=1"
mpirun=(mpirun --oversubscribe -x TSAN_OPTIONS -x OMP_WAIT_POLICY)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)
for ranks in 2 4; do
  "${mpirun[@]}" -np "$ranks" build-tsan/tests/parallel/parallel_tests --gtest_brief=1
done
(
  cd "$work"
  # One thread per rank: OpenMP's runtime is not instrumented, so only loom's threads are checked
  # (the host, the device's stream, the MPI progress thread).
  emulated=("${run[@]}" --set runtime.device=EMULATED --set train.steps=3 --set parallel.dp=1
            --set parallel.zero_stage=0)
  "$OLDPWD/build-tsan/loom" "${emulated[@]}" --run-dir tsan-emulated
  "$OLDPWD/build-tsan/loom" "${emulated[@]}" --set parallel.dp=2 --set parallel.tp=2 \
    --set parallel.zero_stage=1 --set runtime.precision=BF16 --run-dir tsan-emulated-dp-tp
)
equivalence_on_emulated "$PWD/build-tsan/loom" ThreadSanitizer
echo "sanitize: ThreadSanitizer communicator tests, emulated training and equivalence tests (build and run) in $((SECONDS - step)) s"
echo "sanitize: passed in $((SECONDS - started)) s"
