#!/usr/bin/env bash
# A multi-rank job never hangs: a rank killed (by a fault or by kill -9), a rank that throws, a
# collective or pipeline transfer that times out each end the whole job quickly, with a non-zero exit and
# a message naming the rank (and, for a timeout, the group and the operation). A slow rank is
# named in metrics.jsonl and warned about before it becomes a hang. (Signals: test_signals.sh.)
#
# usage: test_faults.sh LOOM_BINARY SOURCE_DIR
set -uo pipefail
loom=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
source "$src/tests/lib/wait_job.sh"
cd "$tmp"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
export OMP_WAIT_POLICY=PASSIVE
mpirun=(mpirun --oversubscribe -np 2)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)

"$loom" prepare --input "$src/core" --output data >/dev/null || exit 1
cat >tiny.textproto <<'EOF'
model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 block_layers: 1 loops: 2 }
train { global_batch: 4 micro_batch: 2 seq_len: 32 steps: 100000 }
data { train_shards: "data/train_*.bin" val_shards: "" }
checkpoint { interval: 0 }
logging { interval: 1000 sample_tokens: 0 }
runtime { threads: 1 }
parallel { dp: 2 }
EOF

# expect_job NAME MAX_SECONDS PATTERN... -- COMMAND: the job exits non-zero within MAX_SECONDS
# and its output contains every PATTERN.
expect_job() {
  local name=$1 limit=$2
  shift 2
  local patterns=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  local start=$SECONDS
  timeout 120 "$@" >"$name.out" 2>&1
  local rc=$? elapsed=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then fail "$name: exit status 0"; tail -15 "$name.out"; return; fi
  if [ "$rc" -eq 124 ]; then fail "$name: still running after 120 s (hung)"; tail -15 "$name.out"; return; fi
  if [ "$elapsed" -gt "$limit" ]; then fail "$name: took ${elapsed} s (limit $limit s)"; tail -15 "$name.out"; return; fi
  for p in "${patterns[@]}"; do
    if ! grep -qF -- "$p" "$name.out"; then
      fail "$name: output lacks '$p':"; tail -15 "$name.out"; return
    fi
  done
  pass "$name: exit $rc after ${elapsed} s"
}

# A rank killed by the system (SIGKILL at its 5th gradient all-reduce), through loom's launcher.
LOOM_FAULT="rank=1,group=dp_sp,op=5,action=kill" expect_job killed-rank 30 \
  "rank 1" "signal 9" -- "$loom" train tiny.textproto --run-dir run-kill

# A rank whose operation fails while other buckets are in flight: that rank reports it (not a
# later symptom) and the job ends, without touching buffers that are being freed.
LOOM_FAULT="rank=1,group=dp_sp,op=5,action=fail" expect_job failing-rank 30 \
  "[rank 1 dp=1 pp=0 sp=0 tp=0]" "injected failure of all_reduce" -- \
  "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto --set parallel.bucket_mb=0.01 \
  --run-dir run-fail
if grep -qE "Segmentation|signal 11|Address not mapped" failing-rank.out; then
  fail "failing-rank: a rank crashed while the job aborted: $(grep -m1 -E 'Segmentation|signal 11|Address' failing-rank.out)"
fi

# Tensor parallelism (the same 2 ranks as tp = 2): a failing tensor-parallel all-reduce in the
# middle of a ladder step ends the job with a message naming the tp group.
LOOM_FAULT="rank=1,group=tp,op=40,action=fail" expect_job failing-tp-rank 30 \
  "[rank 1 dp=0 pp=0 sp=0 tp=1]" "injected failure of all_reduce" "on group tp" -- \
  "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto --set parallel.dp=1 \
  --set parallel.tp=2 --set train.micro_batch=4 --set model.residual=LADDER --run-dir run-tp-fail

# A rank that is late by far more than the timeout: the others report who they waited for.
LOOM_FAULT="rank=1,group=dp_sp,op=3,action=delay,seconds=600" expect_job timeout 30 \
  "timeout: all_reduce" "group dp_sp" "waiting for global rank 1" -- \
  "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto --set parallel.collective_timeout_s=2 \
  --run-dir run-timeout

# Pipeline parallelism (the same 2 ranks as 2 stages, 4 micro-batches a step): stage 1 killed in
# the middle of a step (its 9th transfer) ends the job naming the rank; stage 1 stuck on a
# transfer ends it after the timeout, stage 0 naming itself, its peer and what it waited for.
LOOM_FAULT="rank=1,group=pp,op=9,action=kill" expect_job killed-pipeline-stage 30 \
  "rank 1" "signal 9" -- "$loom" train tiny.textproto --set parallel.dp=1 --set parallel.pp=2 \
  --set train.micro_batch=1 --run-dir run-pp-kill
LOOM_FAULT="rank=1,group=pp,op=9,action=delay,seconds=600" expect_job stuck-pipeline-stage 30 \
  "pipeline stage 0 waiting for micro-batch" "from stage 1" "group pp" "waiting for global rank 1" -- \
  "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto --set parallel.dp=1 --set parallel.pp=2 \
  --set train.micro_batch=1 --set parallel.collective_timeout_s=2 --run-dir run-pp-timeout

# Sequence parallelism (the same 2 ranks as one sp ring): a rank killed in the middle of a ring
# ends the job naming it; a rank stuck on a ring transfer ends it after the timeout, the other
# naming the ring step and the peer it waited for.
LOOM_FAULT="rank=1,group=sp,op=7,action=kill" expect_job killed-sequence-rank 30 \
  "rank 1" "signal 9" -- "$loom" train tiny.textproto --set parallel.dp=1 --set parallel.sp=2 \
  --run-dir run-sp-kill
LOOM_FAULT="rank=1,group=sp,op=7,action=delay,seconds=600" expect_job stuck-sequence-rank 30 \
  "ring attention" "sp rank 0 of 2" "group sp" "waiting for global rank 1" -- \
  "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto --set parallel.dp=1 --set parallel.sp=2 \
  --set parallel.collective_timeout_s=2 --run-dir run-sp-timeout

# kill -9 from outside, once the run is training.
start_job() {  # start_job DIR: loom train through mpirun in the background; sets job_pid
  "${mpirun[@]}" "$loom" train tiny.textproto --set logging.interval=1 --run-dir "$1" \
    >"$1.out" 2>&1 &
  job_pid=$!
  for _ in $(seq 300); do
    [ -s "$1/metrics.jsonl" ] && return 0
    sleep 0.1
  done
  fail "$1: no training step within 30 s"; return 1
}
rank_pid() {  # rank_pid PARENT RANK: the pid of that rank among PARENT's children
  for pid in $(pgrep -P "$1"); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$pid"; return
    fi
  done
}
if start_job run-kill9; then
  victim=$(rank_pid "$job_pid" 1)
  if [ -z "$victim" ]; then
    fail "kill-9: rank 1's process not found"
  else
    start=$SECONDS
    kill -9 "$victim"
    wait_job 60 "$job_pid"
    elapsed=$((SECONDS - start))
    if [ "$rc" -eq 0 ] || [ "$elapsed" -gt 30 ]; then
      fail "kill-9: exit $rc after ${elapsed} s"
    elif ! grep -q "rank 1" run-kill9.out; then
      fail "kill-9: output does not name rank 1: $(tail -5 run-kill9.out)"
    else
      pass "kill-9: exit $rc after ${elapsed} s"
    fi
  fi
fi

# Ranks started with different settings (mpirun's MPMD form) stop before training, naming the
# field and the rank.
for field in optim.lr=0.001 model.d_model=64; do
  expect_job "mpmd-${field%%=*}" 30 "rank 1" "${field%%=*}" "different settings" -- \
    mpirun --oversubscribe $([ "$(id -u)" = 0 ] && echo --allow-run-as-root) \
    -np 1 "$loom" train tiny.textproto --run-dir "run-mpmd-${field%%=*}" : \
    -np 1 "$loom" train tiny.textproto --set "$field" --run-dir "run-mpmd-${field%%=*}"
done

# A shard written over in place while the run reads it (same size, other in-vocabulary tokens)
# stops the run naming it; --resume then refuses the changed shard (shards.crc).
for dp in 1 2; do
  rm -rf "data-w$dp"; cp -r data "data-w$dp"
  name=run-overwrite-$dp
  "$loom" train tiny.textproto --set parallel.dp=$dp --set logging.interval=1 \
    --set checkpoint.interval=5 --set "data.train_shards=data-w$dp/train_*.bin" \
    --run-dir "$name" >"$name.out" 2>&1 &
  job=$!
  for _ in $(seq 300); do [ -s "$name/checkpoints/step_0000005/checkpoint.textproto" ] && break; sleep 0.1; done
  python3 -c "
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
for i in range(1024, len(b), 2):
    b[i], b[i + 1] = (b[i] * 7 + 1) % 200, 0
open(p, 'r+b').write(b)" "data-w$dp/train_000000.bin"
  wait_job 60 "$job"
  "$loom" train tiny.textproto --set parallel.dp=$dp --set "data.train_shards=data-w$dp/train_*.bin" \
    --run-dir "$name" --resume >"$name-resume.out" 2>&1
  resumed=$?
  if [ "$rc" -eq 0 ] || ! grep -q "shard [^ ]*data-w$dp/train_000000.bin changed while the run read it" "$name.out"; then
    fail "overwrite dp $dp: exit $rc: $(grep -m2 error "$name.out" || tail -2 "$name.out")"
  elif [ "$resumed" -ne 1 ] || ! grep -q "shard [^ ]*data-w$dp/train_000000.bin changed since the run started" "$name-resume.out"; then
    fail "overwrite dp $dp: resume exit $resumed: $(tail -2 "$name-resume.out")"
  else
    pass "overwrite dp $dp: the run stopped naming the shard; --resume refused it"
  fi
done

# A straggler: rank 1 runs at nice 5 on one core beside a busy loop pinned there, and rank 0 on
# another core when there is one, so rank 1 computes several times slower than rank 0 whatever
# the machine's core count (on a single core too: nice 5 weighs a third of nice 0); metrics name
# it as the slowest every interval and rank 0 warns after three intervals in a row
# (logging.straggler_pct).
read -r first_cpu last_cpu < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[-1])')
taskset -c "$last_cpu" yes >/dev/null & hog=$!
straggle=(train tiny.textproto --set train.steps=3 --set logging.interval=1 --run-dir run-straggler
          --set model.d_model=128 --set model.n_heads=4 --set model.d_mlp=512
          --set train.micro_batch=8 --set train.global_batch=16)
timeout 120 mpirun --oversubscribe $([ "$(id -u)" = 0 ] && echo --allow-run-as-root) \
  -np 1 taskset -c "$first_cpu" "$loom" "${straggle[@]}" : \
  -np 1 taskset -c "$last_cpu" nice -n 5 "$loom" "${straggle[@]}" >straggler.out 2>&1
rc=$?
kill "$hog" 2>/dev/null
slowest=$(grep -o '"slowest_rank":[0-9]*' run-straggler/metrics.jsonl 2>/dev/null | sort | uniq -c | sort -rn | head -1)
if [ "$rc" -ne 0 ] || ! grep -q "warning: rank 1 is a straggler" straggler.out ||
   [ "$(grep -c '"rank_busy_ms_max"' run-straggler/metrics.jsonl)" -ne 3 ]; then
  fail "straggler: exit $rc, slowest $slowest: $(grep -m1 straggler straggler.out || tail -2 straggler.out)"
  grep -o '"rank_busy_ms_[a-z]*":[0-9.]*' run-straggler/metrics.jsonl; tail -15 straggler.out
else
  pass "straggler: rank 1 named (${slowest}), warned after 3 intervals"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
