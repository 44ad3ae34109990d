#!/usr/bin/env bash
# The loss against depth: a tiny looped model validated at several loop counts while it trains
# (train.eval_loops as a list, metrics.jsonl's val_loss_by_loops), then `loom eval` of its
# checkpoint at 1, 2 and 4 loops: a row per count, bits per byte consistent with the loss and
# the bytes it counted, the trainer's own validation loss at the counts it ran, a well-formed
# SVG chart, and one clear line for each mistake.
# Usage: test_eval.sh LOOM_BINARY SOURCE_DIR
set -u
loom=$1
src=$2
source "$src/tests/cli/cli_common.sh"

"$loom" prepare --input "$src/core" --ext .h --output data --val-fraction 0.2 >/dev/null ||
  { echo "FAIL: prepare"; exit 1; }
cat >tiny.textproto <<'EOF'
model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32
        prelude_layers: 1 block_layers: 1 loops: 2 coda_layers: 1 }
train { global_batch: 4 micro_batch: 2 seq_len: 32 steps: 4 eval_interval: 2 eval_batches: 2
        eval_loops: [2, 1] }
optim { lr: 1e-2 warmup_steps: 0 }
data { train_shards: "data/train_*.bin" val_shards: "data/val_*.bin" }
checkpoint { interval: 4 }
logging { interval: 1 sample_tokens: 0 }
runtime { threads: 1 }
EOF

# --- training validates at each listed count ---
expect_ok train "$loom" train tiny.textproto --run-dir run
grep -qE '^step +4/4 .* \| val_loss by loops 2: [0-9.]+, 1: [0-9.]+$' "$tmp/out.txt" && pass ||
  fail "the progress line lacks the losses by loop count: $(grep 'step *4/4' "$tmp/out.txt")"
/usr/bin/python3 - run/metrics.jsonl <<'PY' && pass || fail "metrics.jsonl's val_loss_by_loops"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
evals = [r for r in rows if "val_loss" in r]
assert [r["step"] for r in evals] == [2, 4], evals
for r in evals:
    assert list(r["val_loss_by_loops"]) == ["2", "1"], r  # in train.eval_loops' order
    assert r["val_loss"] == r["val_loss_by_loops"]["2"], r  # the first listed count
assert all("val_loss_by_loops" not in r for r in rows if "val_loss" not in r)
PY
expect_ok train-set "$loom" train tiny.textproto --set train.eval_loops=4,1,2 --set train.steps=2 \
  --run-dir run-set
grep -q '"val_loss_by_loops":{"4":[0-9.]*,"1":[0-9.]*,"2":[0-9.]*}' run-set/metrics.jsonl && pass ||
  fail "--set train.eval_loops=4,1,2: $(tail -1 run-set/metrics.jsonl)"

# --- loom eval of the run's newest checkpoint ---
expect_ok eval "$loom" eval run --loops 1,2,4
cp "$tmp/out.txt" eval.txt
/usr/bin/python3 - eval.txt run/metrics.jsonl <<'PY' && pass || fail "loom eval's table: $(cat eval.txt)"
import json, math, re, sys
text = open(sys.argv[1]).read()
bytes_ = int(re.search(r"(\d+) bytes of text", text).group(1))
rows = [l.split() for l in text.splitlines() if re.match(r"^\s*\d+\s+[0-9.]+\s+[0-9.]+\s+\d+\s", l)]
assert [int(r[0]) for r in rows] == [1, 2, 4], rows
loss = {int(r[0]): float(r[1]) for r in rows}
for r in rows:
    tokens = int(r[3])
    assert tokens == 2 * 4 * 32, r  # eval_batches × global_batch × seq_len
    assert abs(float(r[2]) - float(r[1]) / math.log(2) * tokens / bytes_) < 2e-6, r
# The trainer validated the same checkpoint (step 4) on the same batches at 2 and 1 loops.
last = [json.loads(l) for l in open(sys.argv[2]) if '"val_loss"' in l][-1]
for count in (2, 1):
    assert abs(loss[count] - last["val_loss_by_loops"][str(count)]) < 2e-6, (count, loss, last)
assert "chart: run/eval_loops.svg" in text, text
PY
/usr/bin/python3 -c '
import sys, xml.dom.minidom
doc = xml.dom.minidom.parse(sys.argv[1])
assert doc.documentElement.tagName == "svg"
assert len(doc.getElementsByTagName("circle")) == 3
texts = " ".join(t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild)
assert "loop count" in texts and "validation loss" in texts and "bits per byte" in texts, texts
' run/eval_loops.svg && pass || fail "run/eval_loops.svg is not a well-formed chart of 3 points"
expect_ok eval-checkpoint "$loom" eval run/checkpoints/step_0000004 --loops 3 --batches 1 \
  --data "data/val_*.bin"
grep -qF "chart: run/checkpoints/eval_loops_step_0000004.svg" "$tmp/out.txt" &&
  [ -s run/checkpoints/eval_loops_step_0000004.svg ] && pass ||
  fail "loom eval CHECKPOINT's chart: $(cat "$tmp/out.txt")"
expect_ok eval-default "$loom" eval run --svg default.svg
[ "$(grep -cE '^ +[0-9]+ +[0-9.]+ ' "$tmp/out.txt")" -eq 2 ] && [ -s default.svg ] && pass ||
  fail "loom eval without --loops takes train.eval_loops: $(cat "$tmp/out.txt")"
"$loom" help eval >help-eval.txt && "$loom" eval --help >eval-help.txt &&
  cmp -s help-eval.txt eval-help.txt && grep -qF -- "--loops LIST" help-eval.txt && pass ||
  fail "loom help eval"
"$loom" --help | grep -qF "eval CHECKPOINT|RUN_DIR [--loops 1,2,4,...]" && pass ||
  fail "loom --help does not list eval"

# --- mistakes: one line naming what is wrong ---
expect_error loops-zero "--loops: 0 is not a loop count; each must be between 1 and" -- \
  "$loom" eval run --loops 1,0
expect_error loops-word '--loops: "x" is not a loop count' -- "$loom" eval run --loops 2,x
expect_error loops-empty '--loops: "2," is not a list of loop counts' -- "$loom" eval run --loops 2,
expect_error no-checkpoint "no checkpoint at nowhere: it does not exist" -- "$loom" eval nowhere --loops 2
expect_error no-shards 'no shard matches' -- "$loom" eval run --loops 2 --data "none/val_*.bin"
expect_error bad-batches "--batches must be between 1 and" -- "$loom" eval run --batches 0
expect_ok train-injected "$loom" train tiny.textproto --set model.input_injection=true \
  --set train.eval_loops= --set train.steps=1 --set checkpoint.interval=1 --set data.val_shards= \
  --run-dir run-injected
expect_error injection "needs at least 2 loop iterations" -- "$loom" eval run-injected --loops 1,2
expect_error no-val-data "the run has no validation data (its data.val_shards is empty)" -- \
  "$loom" eval run-injected --loops 2
expect_error svg-over-run-file "--svg run/metrics.jsonl exists and is not an .svg file" -- \
  "$loom" eval run --svg run/metrics.jsonl
[ "$("$loom" eval run --loops 0 2>&1 >/dev/null | wc -l)" -eq 1 ] && pass ||
  fail "a mistake takes more than one line: $("$loom" eval run --loops 0 2>&1)"

finish
