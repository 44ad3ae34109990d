#!/usr/bin/env bash
# The first hour with loom, as a new user lives it: the top-level help and --version, mistakes in
# a config or on the command line answered with what was meant and where, data paths beside the
# config, resume and sample by run directory, what the console and train.log say, a start-up
# error of a multi-rank job said once without MPI's banner, and loom trace's wait column.
# Usage: test_first_hour.sh LOOM_BINARY SOURCE_DIR
set -u
loom=$1
src=$2
source "$src/tests/cli/cli_common.sh"

"$loom" prepare --input "$src/core" --input "$src/kernels" --ext .cpp --ext .h --output data \
  --val-fraction 0.2 >/dev/null || { echo "FAIL: prepare"; exit 1; }
# A tiny model that learns enough in a few steps for the closing sample to say something.
cat >tiny.textproto <<'EOF'
model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32
        prelude_layers: 1 block_layers: 2 loops: 2 coda_layers: 1 input_injection: true }
train { global_batch: 4 micro_batch: 2 seq_len: 32 steps: 6 eval_interval: 3 eval_batches: 1 }
optim { lr: 1e-2 warmup_steps: 0 }
data { train_shards: "data/train_*.bin" val_shards: "data/val_*.bin" }
checkpoint { interval: 3 }
logging { interval: 1 sample_tokens: 20 }
runtime { threads: 1 }
EOF

# --- the command line ---
"$loom" --version >version.txt 2>&1 &&
  grep -qE '^loom [0-9]+\.[0-9]+\.[0-9]+ \(commit ([0-9a-f]{7,}(-dirty)?|unknown)\)$' version.txt &&
  grep -qE '^build: .+, -march=[^,]+, CUDA backend: (yes|no)$' version.txt && pass ||
  fail "loom --version: $(cat version.txt)"
"$loom" help train >help-train.txt && "$loom" train --help >train-help.txt &&
  cmp -s help-train.txt train-help.txt && pass || fail "loom help train differs from loom train --help"
"$loom" --help >help.txt
for item in "train CONFIG" "plan CONFIG" "prepare " "sample CHECKPOINT|RUN_DIR" "eval CHECKPOINT|RUN_DIR" "export CHECKPOINT|RUN_DIR" \
  "bench step" "bench sgemm" "bench comm" "bench ring" "trace FILE" "doctor RUN_DIR" "plot RUN_DIR" "--version" \
  "--oversubscribe" "--memory-gb" "--hostfile" "--max-restarts" "--resume --run-dir DIR"; do
  grep -qF -- "$item" help.txt && pass || fail "loom --help does not mention $item"
done
"$loom" trian >/dev/null 2>typo.txt
[ $? -eq 2 ] && grep -qF 'unknown command "trian" (did you mean train?)' typo.txt && pass ||
  fail "a misspelled command: $(head -1 typo.txt)"
expect_error set-with-space '--set train.steps 2: the field and its value are one argument joined by "=": --set train.steps=2' -- \
  "$loom" plan tiny.textproto --set train.steps 2
expect_error set-without-value "(the value follows \"=\": --set train.steps=VALUE)" -- \
  "$loom" plan tiny.textproto --set train.steps
expect_error unknown-option "unknown option --run-dri (did you mean --run-dir?); see loom train --help" -- \
  "$loom" train tiny.textproto --run-dri x
expect_error set-field-typo 'no field "d_mpl" in model (did you mean d_mlp?)' -- \
  "$loom" plan tiny.textproto --set model.d_mpl=3
expect_error set-bad-number '--set model.d_model=abc: "abc" is not a valid number' -- \
  "$loom" plan tiny.textproto --set model.d_model=abc
printf 'model {\n  d_model: 64\n  d_mpl: 3\n}\n' >field-typo.textproto
expect_error field-typo 'field-typo.textproto:3:3: Message type "loom.config.ModelConfig" has no field named "d_mpl" (did you mean d_mlp?)' -- \
  "$loom" plan field-typo.textproto
# The enum error points at the value itself (protobuf reports the token after it, 7:1 here).
printf 'model {\n  d_model: 64\n  residual: LADDR\n}\n\n\ntrain { steps: 2 }\n' >enum-typo.textproto
expect_error enum-location 'enum-typo.textproto:3:13: Unknown enumeration value of "LADDR" for field "residual". Valid values: STANDARD, LADDER.' -- \
  "$loom" plan enum-typo.textproto
printf 'model {\n  d_model: abc\n}\n' >bad-number.textproto
expect_error bad-number "bad-number.textproto:2:12: d_model: Expected integer" -- "$loom" plan bad-number.textproto
printf 'model { residual: ladder norm: rmsnorm }\n' >lower.textproto
"$loom" plan lower.textproto --set train.recompute=loop_boundary >lower.txt 2>&1 && pass ||
  fail "enum values in lower case: $(tail -2 lower.txt)"

# --- data paths are relative to the config file ---
mkdir -p elsewhere
expect_ok relative-data bash -c "cd elsewhere && '$loom' train ../tiny.textproto --set train.steps=1 --set logging.sample_tokens=0 --run-dir ../run-relative"
grep -qF "train_shards: \"$tmp/data/train_*.bin\"" run-relative/config.textproto && pass ||
  fail "the run's config.textproto does not hold the resolved path: $(grep shards run-relative/config.textproto)"

# --- a run: the console, train.log, metrics.jsonl ---
expect_ok train "$loom" train tiny.textproto --set optim.lr_min_ratio=1 --run-dir run
cp "$tmp/out.txt" train-console.txt
# Every line starts with the time, but for the sample's text after its "sample:" line.
awk '/^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z / {
       sample = / sample:$/; next }
     !sample { print; bad = 1 } END { exit bad }' run/train.log >untimed.txt && pass ||
  fail "train.log lines without a timestamp: $(head -3 untimed.txt)"
[ "$(tail -1 run/train.log | cut -d' ' -f2-)" = "$(tail -1 train-console.txt)" ] &&
  tail -1 train-console.txt | grep -q "^done: 6 steps, final loss [0-9.]*, val_loss [0-9.]*; run directory run$" && pass ||
  fail "train.log does not end with the console's summary line: $(tail -1 run/train.log) / $(tail -1 train-console.txt)"
grep -qF "1 thread," run/train.log && grep -qF "2 micro-batches of 2 sequences per step" run/train.log && pass ||
  fail "counts not in words: $(grep -E 'thread|micro-batch' run/train.log)"
# lr as written in the config (1e-2 with a constant schedule), not float noise
grep -q '"lr":0.01,' run/metrics.jsonl && ! grep -q '"lr":0.0099999' run/metrics.jsonl && pass ||
  fail "metrics.jsonl's lr: $(grep -o '"lr":[^,]*' run/metrics.jsonl | head -2)"
grep -q "Z sample:$" run/train.log && pass || fail "no closing sample: $(tail -3 run/train.log)"
python3 -c 'import sys; t = open(sys.argv[1], "rb").read(); t.decode("utf-8"); sys.exit(b"\x1b" in t)' run/train.log &&
  pass || fail "train.log is not valid UTF-8 or holds an ESC"
expect_ok short "$loom" train tiny.textproto --set optim.lr=1e-5 --set train.steps=2 --run-dir run-short
grep -q "no sample: the loss [0-9.]* is still near a uniform guess's" run-short/train.log && pass ||
  fail "a 2-step run printed a sample: $(tail -3 run-short/train.log)"

# --- resume, sample and export by run directory ---
expect_ok resume-own-config "$loom" train --resume --run-dir run --set train.steps=8
[ "$(grep -c '"loss"' run/metrics.jsonl)" -eq 8 ] && pass || fail "resume without CONFIG: $(wc -l <run/metrics.jsonl) lines"
# --set paths are the working directory's; the run's config.textproto holds them absolute, so
# resuming from elsewhere reads the same files.
expect_ok set-paths "$loom" train tiny.textproto --set train.steps=2 --set logging.sample_tokens=0 \
  --set "data.train_shards=data/train_*.bin" --set "data.val_shards=data/val_*.bin" --run-dir run-set
expect_ok resume-elsewhere bash -c "cd elsewhere && '$loom' train --resume --run-dir ../run-set --set train.steps=3"
expect_error resume-no-run "no-run/config.textproto does not exist, so this is no run to continue" -- \
  "$loom" train --resume --run-dir no-run
expect_error two-configs "expected exactly one CONFIG file, got 2" -- "$loom" train tiny.textproto tiny.textproto
expect_ok sample-run-dir "$loom" sample run --tokens 5 --prompt "int "
grep -qF "run/checkpoints/step_0000008" "$tmp/out.txt" && pass || fail "loom sample RUN_DIR: $(cat "$tmp/out.txt")"
expect_ok export-run-dir "$loom" export run --safetensors run.safetensors
grep -qF "of run/checkpoints/step_0000008 to run.safetensors" "$tmp/out.txt" && pass ||
  fail "loom export RUN_DIR: $(cat "$tmp/out.txt")"
expect_error sample-not-a-run "elsewhere is neither a checkpoint (it has no checkpoint.textproto) nor a run directory" -- \
  "$loom" sample elsewhere

# --- a pipeline of 2 ranks: rank 0's lines without a label, every stage listed ---
expect_ok train-pp "$loom" train tiny.textproto --set parallel.pp=2 --set train.micro_batch=1 \
  --set logging.trace_steps=2 --run-dir run-pp
grep -q "^\[rank 0" "$tmp/out.txt" && fail "rank 0's console lines carry its label: $(grep -m1 '^\[rank 0' "$tmp/out.txt")" || pass
grep -qE "^step +6/6 \| loss" "$tmp/out.txt" && pass || fail "no progress line: $(tail -3 "$tmp/out.txt")"
grep -qF "pipeline stage 0 runs prelude.0" run-pp/train.log && grep -qF "pipeline stage 1 runs " run-pp/train.log &&
  grep -qF "4 micro-batches" run-pp/train.log && pass || fail "the stages: $(grep -E 'pipeline' run-pp/train.log)"

# --- loom trace counts every wait: tensor-parallel Ladder ranks wait on tp ---
expect_ok train-tp "$loom" train tiny.textproto --set parallel.tp=2 --set model.residual=LADDER \
  --set logging.trace_steps=3 --run-dir run-tp
expect_ok trace-tp "$loom" trace run-tp/trace.json --svg trace-tp.svg --steps 2-3
grep -qF "tp_wait*" "$tmp/out.txt" && awk '/^rank [01] / { if ($NF + 0 <= 0) bad = 1; n++ } END { exit bad || n != 2 }' "$tmp/out.txt" &&
  pass || fail "loom trace's wait leaves out tp_wait: $(cat "$tmp/out.txt")"

# --- a start-up error the ranks find (the launcher leaves data on other nodes to them) ---
err=$("$loom" train tiny.textproto --set parallel.dp=2 --set "data.train_shards=$tmp/nodata/*.bin" \
  --hosts localhost:2 --run-dir run-hosts 2>&1 >/dev/null)
rc=$?
if [ "$rc" -eq 0 ]; then fail "startup-hosts: a job without data succeeded"
elif [ "$(grep -c "no shard matches" <<<"$err")" -ne 1 ]; then fail "startup-hosts: not said once: $err"
elif grep -qE "MPI_ABORT|help message|orte_base_help_aggregate" <<<"$err"; then fail "startup-hosts: MPI's banner: $err"
elif [ -e run-hosts/flight ]; then fail "startup-hosts: flight dumps for a start-up error"
else pass; fi

finish
