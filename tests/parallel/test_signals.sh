#!/usr/bin/env bash
# Signals end a run the way docs/architecture.md ("Failure handling") says: SIGTERM, SIGINT and
# SIGUSR1 stop every rank after the same step with a checkpoint of it (exit 75) and --resume goes
# on from it; a second SIGTERM or SIGINT stops at once (exit 128 + signal) leaving the newest
# complete checkpoint and a last line in train.log; SIGHUP and SIGQUIT end at once with a last
# line; a Slurm job that was requeued (SLURM_RESTART_COUNT) continues its run by itself. Both
# through loom train's own launcher and with the signal sent to every rank of a plain mpirun
# (as Slurm's --signal does), and for a single process.
#
# usage: test_signals.sh LOOM_BINARY SOURCE_DIR
set -uo pipefail
loom=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
failures=0
source "$src/tests/lib/wait_job.sh"
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
logging { interval: 1 sample_tokens: 0 }
runtime { threads: 1 }
parallel { dp: 2 }
EOF

# start NAME COMMAND...: runs the command in the background (SIGINT and SIGQUIT not ignored, as
# in a terminal) until NAME/metrics.jsonl has a step; sets pid.
start() {
  local name=$1
  shift
  env --default-signal=INT,QUIT "$@" >"$name.out" 2>&1 &
  pid=$!
  for _ in $(seq 600); do [ -s "$name/metrics.jsonl" ] && return 0; sleep 0.1; done
  fail "$name: no training step within 60 s: $(tail -3 "$name.out")"
  return 1
}
# finish: waits for $pid (killing it after 60 s); sets rc and elapsed.
finish() {
  local begin=$SECONDS
  wait_job 60 "$pid"
  elapsed=$((SECONDS - begin))
}
# stopped_cleanly NAME HOW SIGNAL: exit 75, a checkpoint of the last step in metrics.jsonl, the
# stop logged with its signal, no process left; then --resume continues from that checkpoint.
stopped_cleanly() {
  local name=$1 how=$2 signal=$3
  sleep 1
  local left last saved
  left=$(pgrep -f "run-dir $name( |$)" | wc -l)
  last=$(grep '"loss"' "$name/metrics.jsonl" | tail -1 | sed 's/{"step":\([0-9]*\),.*/\1/')
  saved=$(ls "$name/checkpoints" 2>/dev/null | tail -1)
  if [ "$rc" -ne 75 ] || [ "$saved" != "$(printf 'step_%07d' "$last")" ] || [ "$left" -ne 0 ]; then
    fail "$name ($how): exit $rc, last step $last, checkpoint $saved, $left processes left: $(tail -3 "$name.out")"
  elif ! grep -q "stopped at step $last of 100000 on" "$name/train.log" ||
       ! tail -2 "$name/train.log" | grep -q "$signal"; then
    fail "$name ($how): train.log does not say it stopped on $signal: $(tail -2 "$name/train.log")"
  else
    "$loom" train tiny.textproto "${@:4}" --set train.steps=$((last + 2)) --run-dir "$name" \
      --resume >"$name-resume.out" 2>&1
    local resumed=$?
    if [ "$resumed" -ne 0 ] ||
       ! grep -q "resumed from .*step_$(printf '%07d' "$last") at step $last" "$name-resume.out"; then
      fail "$name ($how): resume exit $resumed: $(tail -3 "$name-resume.out")"
    else
      pass "$name ($how): stopped after step $last with its checkpoint (exit 75), resumed"
    fi
  fi
}

# Through loom train's launcher: SIGTERM (Slurm's preemption), Ctrl-C, SIGUSR1.
for sig in TERM INT USR1; do
  name=launcher-$sig
  if start "$name" "$loom" train tiny.textproto --run-dir "$name"; then
    kill -"$sig" "$pid"; finish
    stopped_cleanly "$name" "SIG$sig to loom train" "SIG$sig"
  fi
done
# The same for a single process.
for sig in TERM INT; do
  name=single-$sig
  if start "$name" "$loom" train tiny.textproto --set parallel.dp=1 --run-dir "$name"; then
    kill -"$sig" "$pid"; finish
    stopped_cleanly "$name" "SIG$sig to one process" "SIG$sig" --set parallel.dp=1
  fi
done
# SIGTERM to every rank of a plain mpirun (sbatch --signal=TERM@120 signals the tasks).
name=ranks-TERM
if start "$name" "${mpirun[@]}" "$loom" train tiny.textproto --run-dir "$name"; then
  pkill -TERM -f "^[^ ]*loom train tiny.textproto --run-dir $name\$"
  finish
  stopped_cleanly "$name" "SIGTERM to every rank" "SIGTERM"
fi

# A second signal stops at once: each step takes 10 s here (every gradient all-reduce delayed),
# so the first signal's stop is still waiting for its step when the second comes 2.5 s later
# (after the 2 s in which a repeat counts as the same request), even on a loaded machine where
# the step's line reaches metrics.jsonl late.
delay=LOOM_FAULT="rank=*,group=dp_sp,op=*,action=delay,seconds=10"
ranks_of() { pgrep -f "^[^ ]*loom train tiny.textproto.*--run-dir $1\$"; }
for target in launcher ranks; do
  name=twice-$target
  if [ "$target" = launcher ]; then
    start "$name" env "$delay" "$loom" train tiny.textproto --set checkpoint.interval=1 \
      --run-dir "$name" || continue
    kill -TERM "$pid"; sleep 2.5; kill -TERM "$pid"
  else
    start "$name" env "$delay" "${mpirun[@]}" -x LOOM_FAULT "$loom" train tiny.textproto \
      --set checkpoint.interval=1 --run-dir "$name" || continue
    kill -TERM $(ranks_of "$name"); sleep 2.5; kill -TERM $(ranks_of "$name")
  fi
  finish
  newest=$(ls "$name/checkpoints" | grep '^step_' | tail -1)
  if [ "$rc" -ne 143 ] || [ "$elapsed" -gt 5 ]; then
    fail "$name: exit $rc (expected 143) ${elapsed} s after the second SIGTERM"
  elif ! tail -2 "$name/train.log" | grep -q "SIGTERM.*newest complete checkpoint is intact"; then
    fail "$name: no last line in train.log: $(tail -2 "$name/train.log")"
  elif [ -n "$newest" ] && [ ! -s "$name/checkpoints/$newest/checkpoint.textproto" ]; then
    fail "$name: the newest checkpoint $newest is incomplete"
  else
    pass "$name: a second SIGTERM ended the job within ${elapsed} s (exit 143) with a last line"
  fi
done

# SIGHUP and SIGQUIT end a single process at once, with a last line.
for sig in HUP QUIT; do
  name=single-$sig
  if start "$name" "$loom" train tiny.textproto --set parallel.dp=1 --run-dir "$name"; then
    kill -"$sig" "$pid"; finish
    want=$((128 + $(kill -l "$sig")))
    if [ "$rc" -ne "$want" ] ||
       ! tail -1 "$name/train.log" | grep -qE "^[0-9T:-]+Z loom: SIG$sig: the run ends now, after step"; then
      fail "$name: exit $rc (expected $want), last line: $(tail -1 "$name/train.log")"
    else
      pass "$name: exit $rc, last line in train.log"
    fi
  fi
done

# A requeued Slurm job continues its run without --resume.
steps=$(($(grep -c '"loss"' single-TERM/metrics.jsonl) + 2))
SLURM_RESTART_COUNT=1 "$loom" train tiny.textproto --set parallel.dp=1 --set train.steps=$steps \
  --run-dir single-TERM >requeued.out 2>&1
rc=$?
if [ "$rc" -ne 0 ] || ! grep -q "Slurm requeued this job" requeued.out ||
   ! grep -q "resumed from" requeued.out; then
  fail "requeued: exit $rc: $(tail -3 requeued.out)"
else
  pass "requeued: SLURM_RESTART_COUNT=1 continued the run"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
