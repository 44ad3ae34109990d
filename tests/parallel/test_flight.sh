#!/usr/bin/env bash
# The flight recorder end to end: a multi-rank `loom train` with an injected hang (LOOM_FAULT)
# ends non-zero after parallel.collective_timeout_s, every rank has left RUN_DIR/flight/
# rank_R.json, and `loom doctor RUN_DIR` names the rank, the group and the operation. SIGUSR2
# makes every rank of a healthy job dump, and the job goes on.
#
# usage: test_flight.sh SCENARIO LOOM_BINARY SOURCE_DIR
#   SCENARIO: dp-hang dp-skip dp-swap tp-hang tp-skip dp-tp-hang dp-tp-skip dp-tp-swap sigusr2
#
# The faults act on an operation of a group by its number (from 0, per group, as the flight
# recorder and the timeout message count them). With the tiny model below a step issues:
#   dp = 2:         2 dp_sp all-reduces (the one gradient bucket, then loss, norm and
#                   recomputed FLOPs: 3 float64);
#                   with bucket_mb = 0.01, 14 buckets (13 × 2621 floats, then 871) and the loss
#   tp = 2:         21 tp all-reduces, the last (21·step − 1) the gradient norm's and the
#                   recomputed FLOPs' (2 float64)
#   dp = 2, tp = 2: the same 21 tp all-reduces; with bucket_mb = 0.01, 7 dp_sp buckets
#                   (6 × 2621 floats, then 2594) and the loss
# then the world all-reduce that asks whether to stop.
set -uo pipefail
scenario=$1
loom=$2
src=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
source "$src/tests/lib/wait_job.sh"
cd "$tmp"
export OMP_WAIT_POLICY=PASSIVE
fail() { echo "FAIL: $scenario: $*"; exit 1; }

"$loom" prepare --input "$src/core" --output data >/dev/null || fail "loom prepare"
cat >tiny.textproto <<'EOF'
model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 block_layers: 1 loops: 2 }
train { global_batch: 4 micro_batch: 2 seq_len: 32 steps: 100000 }
data { train_shards: "data/train_*.bin" val_shards: "" }
checkpoint { interval: 0 }
logging { interval: 1000 sample_tokens: 0 }
runtime { threads: 1 }
parallel { dp: 2 collective_timeout_s: 2 }
EOF
dp_tp=(--set parallel.tp=2)
tp=(--set parallel.dp=1 --set parallel.tp=2 --set train.micro_batch=4)
small_buckets=(--set parallel.bucket_mb=0.01)

# expect_hang RANKS FAULT [loom train options...] -- PATTERN...: the job ends non-zero within 60 s,
# RANKS dumps exist, and loom doctor's report contains every PATTERN.
expect_hang() {
  local ranks=$1 fault=$2
  shift 2
  local options=()
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  local start=$SECONDS
  LOOM_FAULT=$fault timeout 120 "$loom" train tiny.textproto "${options[@]}" --run-dir run \
    >train.out 2>&1
  local rc=$? elapsed=$((SECONDS - start))
  [ "$rc" -ne 0 ] || fail "the job with LOOM_FAULT=$fault ended with status 0"
  [ "$rc" -ne 124 ] || fail "the job with LOOM_FAULT=$fault still ran after 120 s"
  [ "$elapsed" -le 60 ] || fail "the job took $elapsed s"
  grep -q "flight recorder: $ranks of $ranks ranks' dumps in run/flight" train.out ||
    fail "no rank reported all $ranks dumps: $(grep 'flight recorder' train.out || tail -5 train.out)"
  for ((r = 0; r < ranks; r++)); do
    [ -s "run/flight/rank_$r.json" ] || fail "no run/flight/rank_$r.json"
  done
  "$loom" doctor run >doctor.out 2>&1 || fail "loom doctor failed: $(cat doctor.out)"
  echo "--- loom doctor run (LOOM_FAULT=$fault; job status $rc after $elapsed s):"
  cat doctor.out
  for p in "$@"; do
    grep -qF -- "$p" doctor.out || fail "loom doctor's report lacks '$p'"
  done
  echo "ok: $scenario"
}

case "$scenario" in
  dp-hang)  # rank 1 stops before its gradient bucket of step 5 (dp_sp #8)
    expect_hang 2 "rank=1,group=dp_sp,op=8,action=hang" -- \
      "rank 1 (dp=1) is behind." \
      "In group dp_sp [ranks 0 1] it never issued #8 all_reduce of 34944 float32 (avg), which rank 0 waits in" \
      "It is at step 5, backward of micro-batch 0, and waits on no communication" \
      "rank 0 waits 2." ;;
  dp-skip)  # rank 1 skips the loss sum of step 5 (dp_sp #9) and waits in the stop check
    expect_hang 2 "rank=1,group=dp_sp,op=9,action=skip" -- \
      "The waits form a cycle" "rank 1 (dp=1) is behind." \
      "it never issued #9 all_reduce of 3 float64 (sum), which rank 0 waits in" \
      "itself waits in group world [ranks 0 1]" "skipped that operation" ;;
  dp-swap)  # rank 1 issues the last two buckets of step 2 (dp_sp #27, #28) the other way round
    expect_hang 2 "rank=1,group=dp_sp,op=27,action=swap" "${small_buckets[@]}" -- \
      "group dp_sp [ranks 0 1] #27: the ranks called different collectives:" \
      "rank 0: #27 all_reduce of 2621 float32 (avg)" "rank 1: #27 all_reduce of 871 float32 (avg)" \
      "rank 0 and rank 1 issued #27 and #28 in opposite orders" ;;
  tp-hang)  # rank 1 stops in the forward of step 3, before tp #47
    expect_hang 2 "rank=1,group=tp,op=47,action=hang" "${tp[@]}" -- \
      "rank 1 (tp=1) is behind." \
      "In group tp [ranks 0 1] it never issued #47 all_reduce of 4096 float32 (sum), which rank 0 waits in" \
      "It is at step 3, forward of micro-batch 0, and waits on no communication" ;;
  tp-skip)  # rank 1 skips the gradient norm's sum of step 3 (tp #62)
    expect_hang 2 "rank=1,group=tp,op=62,action=skip" "${tp[@]}" -- \
      "The waits form a cycle" "rank 1 (tp=1) is behind." \
      "In group tp [ranks 0 1] it never issued #62 all_reduce of 2 float64 (sum), which rank 0 waits in" \
      "itself waits in group world [ranks 0 1]" "skipped that operation" ;;
  dp-tp-hang)  # rank 3 stops before a gradient bucket of step 2 (dp_sp #13): ranks wait in chains
    expect_hang 4 "rank=3,group=dp_sp,op=13,action=hang" "${dp_tp[@]}" "${small_buckets[@]}" -- \
      "rank 3 (dp=1 tp=1) is behind." \
      "In group dp_sp [ranks 1 3] it never issued #13 all_reduce of 2621 float32 (avg), which rank 1 waits in" \
      "It is at step 2, backward of micro-batch 0, and waits on no communication" ;;
  dp-tp-skip)  # rank 3 skips the gradient norm's tp sum of step 3 (tp #62); rank 2 waits for it
    expect_hang 4 "rank=3,group=tp,op=62,action=skip" "${dp_tp[@]}" -- \
      "rank 3 (dp=1 tp=1) is behind." \
      "In group tp [ranks 2 3] it never issued #62 all_reduce of 2 float64 (sum), which rank 2 waits in" \
      "skipped that operation" ;;
  dp-tp-swap)  # rank 3 issues the last two buckets of step 2 (dp_sp #13, #14) the other way round
    expect_hang 4 "rank=3,group=dp_sp,op=13,action=swap" "${dp_tp[@]}" "${small_buckets[@]}" -- \
      "group dp_sp [ranks 1 3] #13: the ranks called different collectives:" \
      "rank 1: #13 all_reduce of 2621 float32 (avg)" "rank 3: #13 all_reduce of 2594 float32 (avg)" \
      "rank 1 and rank 3 issued #13 and #14 in opposite orders" ;;
  sigusr2)  # every rank of a healthy dp = 2 × tp = 2 job dumps on SIGUSR2 and trains on
    "$loom" train tiny.textproto "${dp_tp[@]}" --set logging.interval=1 --run-dir run \
      >train.out 2>&1 &
    job=$!
    for _ in $(seq 300); do [ -s run/metrics.jsonl ] && break; sleep 0.1; done
    [ -s run/metrics.jsonl ] || { kill -9 "$job"; fail "no training step: $(tail -3 train.out)"; }
    kill -USR2 "$job"
    for _ in $(seq 100); do [ "$(ls run/flight/rank_*.json 2>/dev/null | wc -l)" -eq 4 ] && break; sleep 0.1; done
    steps_at_dump=$(wc -l <run/metrics.jsonl)
    sleep 1
    steps_after=$(wc -l <run/metrics.jsonl)
    kill -USR1 "$job"  # stop cleanly
    wait_job 60 "$job"
    [ "$rc" -eq 75 ] || fail "the job ended with status $rc, not 75 (stopped by SIGUSR1): $(tail -3 train.out)"
    [ "$steps_after" -gt "$steps_at_dump" ] || fail "no step after the dump ($steps_at_dump, $steps_after)"
    for r in 0 1 2 3; do
      grep -q '"trigger":"SIGUSR2"' "run/flight/rank_$r.json" || fail "rank $r did not dump on SIGUSR2"
    done
    "$loom" doctor run >doctor.out 2>&1 || fail "loom doctor failed: $(cat doctor.out)"
    echo "--- loom doctor run (after SIGUSR2):"
    cat doctor.out
    for p in "Dumps of 4 of 4 ranks" "rank 3 (dp=1 tp=1) on" ": SIGUSR2" "nothing looks stuck"; do
      grep -qF -- "$p" doctor.out || fail "loom doctor's report lacks '$p'"
    done
    echo "ok: sigusr2 ($steps_at_dump steps at the dump, $steps_after a second later)" ;;
  *) fail "unknown scenario" ;;
esac
