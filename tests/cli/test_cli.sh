#!/usr/bin/env bash
# The `loom` command as a user meets it: prepare, train, resume, export, sample, every --help,
# and the errors a wrong config, override, flag or shard must produce (message and exit status).
# Usage: test_cli.sh LOOM_BINARY SOURCE_DIR
set -u
loom=$1
src=$2
source "$src/tests/cli/cli_common.sh"

# --- data ---
expect_ok prepare "$loom" prepare --input "$src/core" --input "$src/kernels" --ext .cpp --ext .h \
  --output data --val-fraction 0.2
[ -f data/train_000000.bin ] && [ -f data/val_000000.bin ] && pass || fail "prepare wrote no shards"
expect_error prepare-existing "already holds shards" -- "$loom" prepare --input "$src/core" --output data
expect_ok prepare-input-list "$loom" prepare --input "$src/core/model.cpp" "$src/core/data.cpp" "$src/base/rng.h" --output data3 --val-fraction 0.34
grep -q "prepared 3 documents" "$tmp/out.txt" && pass || fail "prepare --input A B C: $(cat "$tmp/out.txt")"

tiny=(--set model.d_model=32 --set model.n_heads=2 --set model.d_mlp=64 --set model.max_seq_len=32
      --set train.seq_len=32 --set train.global_batch=4 --set train.micro_batch=2
      --set train.steps=6 --set train.eval_interval=3 --set train.eval_batches=1
      --set checkpoint.interval=3 --set logging.interval=1 --set logging.sample_tokens=20
      --set runtime.threads=2 --set optim.warmup_steps=0 --set optim.lr=1e-2
      --set "data.train_shards=$tmp/data/train_*.bin" --set "data.val_shards=$tmp/data/val_*.bin")

# --- a run, its directory, resume ---
expect_ok train "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir run
[ "$(wc -l <run/metrics.jsonl)" -eq 6 ] && pass || fail "metrics.jsonl should have 6 lines"
grep -q '"val_loss"' run/metrics.jsonl && pass || fail "metrics.jsonl has no val_loss"
for key in step loss lr grad_norm tokens_per_s ms_per_step; do
  grep -q "\"$key\"" run/metrics.jsonl && pass || fail "metrics.jsonl lacks $key"
done
grep -q 'd_model: 32' run/config.textproto && pass || fail "config.textproto lacks the override"
[ -f run/checkpoints/step_0000006/checkpoint.textproto ] && pass || fail "no final checkpoint"
grep -q "Z sample:" run/train.log && pass || fail "no sample printed: $(tail -3 run/train.log)"

# --- a traced run through the pipeline (2 stages), drawn by loom trace ---
expect_ok train-traced "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir run-pp \
  --set parallel.pp=2 --set train.micro_batch=1 --set logging.trace_steps=2 \
  --set runtime.threads=1
grep -q '"activation_peak_mib"' run-pp/metrics.jsonl && pass || fail "metrics.jsonl lacks activation_peak_mib"
grep -q "pipeline stage 0 runs prelude.0, block.0–1 × iterations 0–1" run-pp/train.log && pass ||
  fail "the log does not say what stage 0 runs: $(grep pipeline run-pp/train.log)"
expect_ok trace "$loom" trace run-pp/trace.json --svg trace.svg --steps 1
[ "$(grep -c '<rect class="event"' trace.svg)" -ge 16 ] && pass ||
  fail "trace.svg: $(grep -c '<rect class="event"' trace.svg) bars for 4 micro-batches × 2 stages"
grep -qE '^rank 1 \(pp 1, dp 0, sp 0, tp 0\) +[0-9.]+ ' "$tmp/out.txt" && pass ||
  fail "loom trace printed no line for rank 1: $(cat "$tmp/out.txt")"
expect_error trace-missing "cannot open trace nope.json" -- "$loom" trace nope.json --svg x.svg
expect_error trace-steps "it holds steps 1-2" -- "$loom" trace run-pp/trace.json --svg x.svg --steps 5
# The trace numbers steps as the progress line and metrics.jsonl do (from 1).
expect_ok trace-step-2 "$loom" trace run-pp/trace.json --svg trace2.svg --steps 2
cp run-pp/trace.json own.json
expect_error trace-onto-itself "is the trace FILE itself" -- "$loom" trace own.json --svg ./own.json
cmp -s own.json run-pp/trace.json && pass || fail "loom trace wrote over its own input"

# Writes onto inputs and absurd environments are refused before anything is touched.
mkdir -p sources && cp "$src/core/config.h" sources/
expect_error prepare-onto-input "is --input" -- "$loom" prepare --input sources --output sources/
expect_error prepare-inside-input "lies inside --input" -- "$loom" prepare --input sources --output sources/shards
[ "$(ls sources)" = "config.h" ] && pass || fail "prepare wrote among its sources: $(ls sources)"
expect_error omp-threads "OMP_NUM_THREADS=100000 is not a thread count" -- env OMP_NUM_THREADS=100000 "$loom" plan "$src/configs/default.textproto"
expect_error checkpoint-escape "leaves the run directory" -- "$loom" plan "$src/configs/default.textproto" --set checkpoint.directory=../escape
expect_error checkpoint-dot "leaves the run directory" -- "$loom" plan "$src/configs/default.textproto" --set checkpoint.directory=a/../..
expect_error sample-tokens-huge "logging.sample_tokens must be between 0 and 65536" -- "$loom" plan "$src/configs/default.textproto" --set logging.sample_tokens=2147483647
expect_error trace-steps-negative "logging.trace_steps must not be negative" -- "$loom" plan "$src/configs/default.textproto" --set logging.trace_steps=-1
expect_error sample-cli-tokens-huge "--tokens must be between 0 and 65536" -- "$loom" sample run/checkpoints/step_9999999 --tokens 2147483647
expect_error sgemm-threads-negative "--threads must be between 0" -- "$loom" bench sgemm --threads -1
expect_error sgemm-size-huge "--size must be between 1 and 16384" -- "$loom" bench sgemm --size 100000
touch plain-file
expect_error prepare-onto-file "exists and is not a folder" -- "$loom" prepare --input "$src/core" --output plain-file
expect_error prepare-onto-dev-full "exists and is not a folder" -- "$loom" prepare --input "$src/core" --output /dev/full
expect_error sentencepiece-vocab-1 "is too small for SentencePiece on this text" -- "$loom" prepare --input "$src/core" --output sp-tiny --tokenizer sentencepiece --vocab-size 1
expect_error sentencepiece-vocab-2 "is too small for SentencePiece on this text" -- "$loom" prepare --input "$src/core" --output sp-tiny --tokenizer sentencepiece --vocab-size 2
expect_error export-to-empty "--safetensors needs a file name" -- "$loom" export run/checkpoints/step_0000006 --safetensors ""
expect_error fault-group-unknown "LOOM_FAULT group=nosuch names no group of loom train" -- env LOOM_FAULT="rank=1,group=nosuch,op=1,action=kill" "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --run-dir fault-group
expect_error init-std-huge "before any update: the initial weights (model.init_std 1e+30)" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set model.init_std=1e30 --run-dir init-huge
expect_error max-restarts-negative "--max-restarts must be between 0 and 1000" -- "$loom" train "$src/configs/default.textproto" --max-restarts -1
expect_error max-restarts-config "train.max_restarts must be between 0 and 1000" -- "$loom" plan "$src/configs/default.textproto" --set train.max_restarts=5000
# loom plan answers in seconds for any world size (it lists the first groups of a large one).
start_plan=$SECONDS
"$loom" plan "$src/configs/default.textproto" --set parallel.dp=100000 --set train.global_batch=100000 --set train.micro_batch=1 >plan-big.out 2>&1
grep -q "dp     1 group of 100000" plan-big.out && [ $((SECONDS - start_plan)) -le 10 ] && pass ||
  fail "plan-dp-100000 took $((SECONDS - start_plan)) s: $(tail -2 plan-big.out)"
# The launcher refuses a layout this machine cannot hold before it starts any rank.
expect_error launch-too-big "this machine has" -- "$loom" train "$src/configs/default.textproto" --set parallel.dp=100000 --set train.global_batch=100000 --set train.micro_batch=1 --oversubscribe --run-dir too-big
[ ! -e too-big ] && pass || fail "launch-too-big: a run directory was made"

# --- a traced run with ring sequence parallelism (sp = 2): the same losses and sample text as the
# single process, ring waits in the trace ---
expect_ok train-sp "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir run-sp \
  --set parallel.sp=2 --set logging.trace_steps=2 --set runtime.threads=1
grep -q "sequences of 32 tokens cut zigzag over sp (16 rows per rank)" run-sp/train.log && pass ||
  fail "the log does not describe the sp layout: $(grep mesh run-sp/train.log)"
losses() { grep -oE '"loss":[0-9.e+-]+' "$1" | cut -d: -f2 | head -6; }
paste <(losses run/metrics.jsonl) <(losses run-sp/metrics.jsonl) |
  awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1; n++ } END { exit bad || n != 6 }' &&
  pass || fail "sp = 2 losses differ from the single process's: $(losses run-sp/metrics.jsonl | head -2)"
# (the text after "sample:", without the lines' timestamps)
[ "$(sed -n '/Z sample:$/,$p' run/train.log | sed -n 2p)" = "$(sed -n '/Z sample:$/,$p' run-sp/train.log | sed -n 2p)" ] &&
  [ -n "$(sed -n '/Z sample:$/,$p' run/train.log | sed -n 2p)" ] && pass ||
  fail "sp = 2 sample differs: $(sed -n '/sample:/,$p' run-sp/train.log | head -2)"
expect_ok trace-sp "$loom" trace run-sp/trace.json --svg trace-sp.svg --steps 1
grep -q "sp_wait" "$tmp/out.txt" && pass || fail "loom trace shows no sp_wait: $(cat "$tmp/out.txt")"

expect_error existing-run "already holds a run" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir run
expect_ok resume "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=8 --run-dir run --resume
grep -q "resumed from" "$tmp/out.txt" && pass || fail "resume did not say where it resumed from"
[ "$(wc -l <run/metrics.jsonl)" -eq 8 ] && pass || fail "resumed metrics.jsonl should have 8 lines"
expect_error resume-other-model "model section of the config differs from the one the run was trained with (model.d_mlp: 64 -> 32" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set model.d_mlp=32 --run-dir run --resume
expect_error resume-other-data "train.seq_len differs" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=9 --set train.seq_len=16 --run-dir run --resume
expect_error resume-finished "already completed 8 steps" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=8 --run-dir run --resume
expect_error resume-other-checkpoints "kept its checkpoints in \"checkpoints\"" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=9 --set checkpoint.directory=elsewhere --run-dir run --resume
# A run directory's files are written only as its own regular files: a link planted in it is
# refused, and the file it points to is untouched.
cp -r run run-link && echo "elsewhere" >elsewhere.txt && ln -sf "$PWD/elsewhere.txt" run-link/train.log
expect_error resume-through-link "run-link/train.log is a symbolic link" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=9 --run-dir run-link --resume
[ "$(cat elsewhere.txt)" = "elsewhere" ] && pass || fail "a resume wrote through a planted link"
# Inputs that are not regular files are refused, never read until they hang.
mkdir -p fifo-data && mkfifo fifo-data/train_000000.bin fifo-hosts fifo-trace.json && mkdir -p dir-data/train_000000.bin
expect_error shard-fifo "fifo-data/train_000000.bin is a FIFO, not a regular file" -- timeout 60 "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set data.train_shards=fifo-data/train_*.bin --run-dir run-fifo
expect_error shard-directory "dir-data/train_000000.bin is a directory" -- timeout 60 "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set data.train_shards=dir-data/train_*.bin --run-dir run-dir
expect_error hostfile-fifo "hostfile fifo-hosts is a FIFO" -- timeout 60 "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --hostfile fifo-hosts --run-dir run-hosts
expect_error trace-fifo "trace fifo-trace.json is a FIFO" -- timeout 60 "$loom" trace fifo-trace.json --svg x.svg
mkfifo fifo-model
expect_error tokenizer-model-fifo "SentencePiece model fifo-model is a FIFO" -- timeout 60 "$loom" prepare --input sources --output sp-out --tokenizer sentencepiece --tokenizer-model fifo-model
# runtime.device CUDA where there is no GPU (or no CUDA in the build): refused, saying which.
if ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error cuda-without-gpu "runtime.device CUDA: this" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set runtime.device=CUDA --run-dir run-cuda
fi
# A launcher that ends well without starting any rank is not a finished run.
mkdir -p fakebin && printf '#!/bin/sh\nexit 0\n' >fakebin/mpirun && chmod +x fakebin/mpirun
expect_error launcher-started-nothing "no rank trained" -- env PATH="$PWD/fakebin:$PATH" "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --run-dir run-nothing
# Multi-node launch options that cannot work are refused before anything starts.
expect_error hosts-and-hostfile "either --hostfile or --hosts, not both" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --hostfile h --hosts a:2 --run-dir hosts
expect_error hosts-single-rank "this layout is a single rank" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --hosts a:2 --run-dir hosts
expect_error hosts-in-slurm "inside a Slurm allocation" -- env SLURM_JOB_ID=1 "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --hosts a:2 --run-dir hosts
expect_error hosts-tp-across "tensor-parallel group {0,1} would span nodes a, b" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.tp=2 --hosts a:1,b:1 --run-dir hosts
expect_error hostfile-missing "cannot open hostfile nope" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set parallel.dp=2 --hostfile nope --run-dir hosts
[ ! -e hosts ] && pass || fail "a refused multi-node launch left a run directory"
# The run's own resolved config.textproto is what a user resumes with.
expect_ok resume-own-config "$loom" train run/config.textproto --set train.steps=9 --run-dir run --resume
[ "$(wc -l <run/metrics.jsonl)" -eq 9 ] && pass || fail "resumed from config.textproto: metrics.jsonl should have 9 lines"
expect_ok checkpoint-directory "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=2 --set checkpoint.directory=saved --run-dir ckdir
[ -f ckdir/saved/step_0000002/checkpoint.textproto ] && pass || fail "checkpoint.directory ignored"

# --- a diverging run: stopped with a message, or its steps skipped when asked ---
expect_error nonfinite-stop "non-finite" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set optim.lr=1e30 --set optim.warmup_steps=0 --run-dir diverge
expect_ok nonfinite-skip "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set optim.lr=1e30 --set optim.warmup_steps=0 --set train.on_nonfinite=SKIP_STEP --run-dir skip
grep -q '"skipped":true' skip/metrics.jsonl && pass || fail "skipped steps are not marked in metrics.jsonl"
/usr/bin/python3 -c '
import json, sys
for line in open(sys.argv[1]): json.loads(line)' skip/metrics.jsonl && pass || fail "metrics.jsonl of a diverged run is not valid JSON"

# --- export and sample ---
expect_ok export "$loom" export run/checkpoints/step_0000008 --safetensors model.safetensors
/usr/bin/python3 - model.safetensors <<'PY' && pass || fail "exported safetensors unreadable"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
assert header["wte"]["shape"] == [257, 32], header["wte"]
assert header["block.1.mlp.fc.weight"]["shape"] == [64, 32]
end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
assert 8 + n + end == len(data)
PY
expect_ok sample "$loom" sample run/checkpoints/step_0000008 --prompt "def " --tokens 30
expect_error sample-missing "no checkpoint at" -- "$loom" sample run/checkpoints/step_9999999
expect_ok train-deep-loops "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir run-deep \
  --set train.steps=3 --set train.recompute=SQRT --set model.loops_sampling.kind=UNIFORM \
  --set model.loops_sampling.min=2 --set model.loops_sampling.max=6 --set train.eval_loops=8
grep -q "deep loops: train.recompute SQRT; each step's loop count drawn UNIFORM from \[2, 6\], validation at 8" \
  run-deep/train.log && pass || fail "train.log does not describe the deep-loop options"
grep -q '"loops":' run-deep/metrics.jsonl && grep -q '"val_loss"' run-deep/metrics.jsonl && pass ||
  fail "metrics.jsonl of the deep-loop run lacks loops or val_loss"
expect_ok sample-deeper "$loom" sample run/checkpoints/step_0000008 --prompt "def " --tokens 10 --loops 9
expect_error sample-loops "--loops 1 is outside [2, 1000000] (input injection needs 2 iterations)" -- \
  "$loom" sample run/checkpoints/step_0000008 --loops 1

# --- bits per byte: at byte level, the loss in bits ---
/usr/bin/python3 - run/metrics.jsonl <<'PY' && pass || fail "byte-level bpb is not loss / ln 2"
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert all(abs(r["bpb"] - r["loss"] / math.log(2)) <= 1e-6 * r["bpb"] for r in rows), rows[0]
assert any("val_bpb" in r for r in rows)
PY

# --- SentencePiece: prepare (trained on the repository's Python and C++), train, sample ---
expect_ok prepare-sp "$loom" prepare --input "$src/tests" --input "$src/core" --ext .py --ext .cpp \
  --output sp --val-fraction 0.1 --tokenizer sentencepiece --vocab-size 400
grep -q "SentencePiece, vocabulary 400" "$tmp/out.txt" && [ -f sp/tokenizer.model ] &&
  grep -q "tokenizer: SENTENCEPIECE" sp/data.textproto && pass ||
  fail "prepare-sp: $(cat "$tmp/out.txt"; cat sp/data.textproto)"
sp_data=(--set "data.train_shards=$tmp/sp/train_*.bin" --set "data.val_shards=$tmp/sp/val_*.bin")
expect_error sp-vocabulary "model.vocab_size (257) is smaller than the data's vocabulary (400 ids" -- \
  "$loom" train "$src/configs/default.textproto" "${tiny[@]}" "${sp_data[@]}" --run-dir r-sp-small
expect_ok train-sp-tokens "$loom" train "$src/configs/default.textproto" "${tiny[@]}" "${sp_data[@]}" \
  --set model.vocab_size=400 --set train.steps=30 --set logging.sample_prompt="def " --run-dir run-spm
[ -f run-spm/tokenizer.model ] && grep -q "vocab_size: 400" run-spm/data.textproto && pass ||
  fail "the run directory lacks its tokenizer"
grep -q '"val_bpb"' run-spm/metrics.jsonl && pass || fail "SentencePiece run has no val_bpb"
grep -q "tokens: SentencePiece" run-spm/train.log && pass || fail "train.log does not name the tokenizer"
expect_ok sample-sp "$loom" sample run-spm/checkpoints/step_0000030 --prompt "def " --tokens 40
/usr/bin/python3 - "$tmp/out.txt" <<'PY' && pass || fail "sample-sp is not text: $(cat "$tmp/out.txt")"
import sys
text = open(sys.argv[1], "rb").read().decode("utf-8")  # valid UTF-8 …
assert text.startswith("def ") and len(text) > 40, text
body = text.replace("\n<|endoftext|>\n", "")
assert "<|" not in body, text                          # … every id decoded …
assert all(c.isprintable() or c in "\n\t" for c in body), text  # … to printable text
PY
expect_ok sample-sp-slash "$loom" sample run-spm/checkpoints/step_0000030/ --tokens 5
expect_error sp-val-other-tokens "hold other tokens than data.train_shards" -- \
  "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set model.vocab_size=400 \
  --set "data.train_shards=$tmp/sp/train_*.bin" --set "data.val_shards=$tmp/data/val_*.bin" --run-dir r-sp-val
# The data re-made under the same path with another tokenizer: resume refuses to go on.
rm -rf sp
expect_ok prepare-sp-again "$loom" prepare --input "$src/tests" --ext .py --output sp --val-fraction 0.2 \
  --tokenizer sentencepiece --vocab-size 380
expect_error sp-resume-other-tokens "--resume: the data's tokens" -- "$loom" train \
  "$src/configs/default.textproto" "${tiny[@]}" "${sp_data[@]}" --set model.vocab_size=400 \
  --set train.steps=32 --run-dir run-spm --resume
expect_error prepare-vocab-too-big "at most 65536" -- "$loom" prepare --input "$src/tests" --output sp2 \
  --tokenizer sentencepiece --vocab-size 70000
expect_error prepare-vocab-bytes "applies to --tokenizer sentencepiece only" -- \
  "$loom" prepare --input "$src/tests" --output sp3 --vocab-size 400
expect_error prepare-bad-model "SentencePiece model nowhere.model" -- "$loom" prepare \
  --input "$src/tests" --output sp4 --tokenizer sentencepiece --tokenizer-model nowhere.model

# --- llm.c's GPT-2 shards train as they are; llm.c's tokenizer file decodes the samples ---
mkdir llmc
/usr/bin/python3 - llmc <<'PY' && pass || fail "could not write llm.c-layout files"
import os, random, struct, sys
out = sys.argv[1]
random.seed(1)
def shard(name, n):  # llm.c's data scripts: 256 int32 header (20240520, 1, n), then uint16 ids
    ids = [random.randrange(50256) if i % 200 else 50256 for i in range(n)]
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack(f"<{n}H", *ids))
shard("train_000000.bin", 20000)
shard("val_000000.bin", 4000)
with open(os.path.join(out, "gpt2_tokenizer.bin"), "wb") as f:  # version 2, 50257 tokens
    f.write(struct.pack("<256I", 20240328, 2, 50257, 50256, *([0] * 252)))
    for i in range(50257):
        token = b"<|endoftext|>" if i == 50256 else f" t{i}".encode()
        f.write(bytes([len(token)]) + token)
PY
expect_ok train-llmc "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set model.vocab_size=50257 \
  --set "data.train_shards=$tmp/llmc/train_*.bin" --set "data.val_shards=$tmp/llmc/val_*.bin" --run-dir run-llmc
grep -q "no sample: the data has no data.textproto" run-llmc/train.log && pass ||
  fail "train-llmc: $(tail -3 run-llmc/train.log)"
expect_ok sample-llmc "$loom" sample run-llmc/checkpoints/step_0000006 --tokens 8 --tokenizer-file llmc/gpt2_tokenizer.bin
grep -qE '^( t[0-9]+|\n|<\|endoftext\|>)+' "$tmp/out.txt" && pass || fail "sample-llmc: $(cat "$tmp/out.txt")"
expect_error sample-llmc-prompt "cannot encode text" -- "$loom" sample run-llmc/checkpoints/step_0000006 \
  --tokenizer-file llmc/gpt2_tokenizer.bin --prompt hi
expect_error sample-llmc-none "pass --tokenizer-file" -- "$loom" sample run-llmc/checkpoints/step_0000006

# --- help ---
for cmd in train prepare sample export bench doctor; do
  "$loom" $cmd --help | grep -q "usage: loom $cmd" && pass || fail "loom $cmd --help"
done

# --- loom doctor: a run that went well left no flight dumps (tests/parallel/test_flight.sh has
# the hung ones) ---
[ ! -e run/flight ] && pass || fail "a healthy run wrote flight dumps: $(ls run/flight)"
expect_error doctor-no-dumps "no flight-recorder dumps in run/flight" -- "$loom" doctor run
expect_error doctor-no-dir "expected exactly one RUN_DIR" -- "$loom" doctor

# --- config errors ---
printf 'model {\n  d_modle: 3\n}\n' >unknown.textproto
expect_error unknown-field "unknown.textproto:2:" -- "$loom" train unknown.textproto
printf 'model { residual: LADDR }\n' >enum.textproto
expect_error bad-enum "Valid values: STANDARD, LADDER" -- "$loom" train enum.textproto
expect_error bad-override 'no field "nope" in model' -- "$loom" train "$src/configs/default.textproto" --set model.nope=1
expect_error bad-override-value "is not a valid number" -- "$loom" train "$src/configs/default.textproto" --set optim.lr=fast
expect_error flight-entries "logging.flight_entries must not be negative" -- "$loom" train "$src/configs/default.textproto" --set logging.flight_entries=-1
expect_error invariant "model.n_heads (3) must divide model.d_model (128)" -- "$loom" train "$src/configs/default.textproto" --set model.n_heads=3
expect_error sp-does-not-divide "must be divisible by 2 × parallel.sp (6)" -- "$loom" train "$src/configs/default.textproto" --set parallel.sp=3
expect_error pipeline-too-few-micro-batches "(m = global_batch / (micro_batch · dp) = 1) must be at least parallel.pp (4)" -- "$loom" train "$src/configs/default.textproto" --set parallel.pp=4
expect_error pipeline-layout-sum "sums to 5 but the model has 10 unrolled layers" -- "$loom" train "$src/configs/default.textproto" --set parallel.pp=2 --set train.micro_batch=4 --set parallel.pipeline_layout=2,3
expect_error pipeline-virtual-stages "parallel.virtual_stages (2) applies to INTERLEAVED_1F1B and ZERO_BUBBLE_V only" -- "$loom" train "$src/configs/default.textproto" --set parallel.pp=2 --set train.micro_batch=4 --set parallel.virtual_stages=2
expect_error bench-step-parallel "bench step times one process" -- "$loom" bench step "$src/configs/default.textproto" --set parallel.tp=2
expect_error parallel-divide "multiple of train.micro_batch × parallel.dp" -- "$loom" train "$src/configs/default.textproto" --set parallel.dp=3
expect_error backprop-loops-zero-bubble "model.backprop_loops cannot run with parallel.pipeline_schedule ZERO_BUBBLE_V" -- "$loom" train "$src/configs/default.textproto" --set parallel.pp=2 --set train.micro_batch=4 --set parallel.pipeline_schedule=ZERO_BUBBLE_V --set parallel.virtual_stages=2 --set model.backprop_loops=2
expect_error backprop-loops "model.backprop_loops (5) must be in [0, 4]" -- "$loom" train "$src/configs/default.textproto" --set model.backprop_loops=5
expect_error loops-sampling-pp "model.loops_sampling needs parallel.pp = 1" -- "$loom" train "$src/configs/default.textproto" --set model.loops_sampling.kind=UNIFORM --set model.loops_sampling.min=2 --set model.loops_sampling.max=6 --set parallel.pp=2 --set train.micro_batch=4
expect_error loops-sampling-fixed "kind is FIXED" -- "$loom" train "$src/configs/default.textproto" --set model.loops_sampling.max=6
expect_error loops-sampling-mean "model.loops_sampling.mean (0) must be in [1, max = 8]" -- "$loom" train "$src/configs/default.textproto" --set model.loops_sampling.kind=POISSON_LOGNORMAL --set model.loops_sampling.min=2 --set model.loops_sampling.max=8
expect_error missing-config "cannot read config" -- "$loom" train nowhere.textproto
expect_error bad-flag "unknown option --rundir" -- "$loom" train "$src/configs/default.textproto" --rundir x
expect_error resume-needs-dir "--resume needs --run-dir" -- "$loom" train "$src/configs/default.textproto" --resume

# Started by mpirun directly, a rank's error ends the job with status 65 (loom train's own
# launcher says 1).
err=$(mpirun --oversubscribe --allow-run-as-root -np 2 "$loom" train "$src/configs/default.textproto" 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 65 ] && grep -qF "the job has 2 ranks but the config's layout needs" <<<"$err" && pass ||
  fail "wrong-world: exit status $rc, expected 65: $err"

# Start-up mistakes of a multi-rank run are found by loom train's launcher before any rank starts
# (no MPI output at all), or said once by the ranks; no flight dumps in the run it refused.
# once NAME PATTERN -- COMMAND: exit 1 (65 for a plain mpirun), PATTERN exactly once, no banner
# (the plain mpirun runs with --quiet).
once() {
  local name=$1 pattern=$2
  shift 3
  local err rc
  err=$("$@" 2>&1 >/dev/null)
  rc=$?
  local count
  count=$(grep -cF -- "$pattern" <<<"$err")
  if [ "$rc" -ne 1 ] && [ "$rc" -ne 65 ]; then fail "$name: exit status $rc: $err"
  elif [ "$count" -ne 1 ]; then fail "$name: '$pattern' printed $count times: $err"
  elif grep -qE "MPI_ABORT|mpirun (noticed|detected)|Primary job" <<<"$err"; then fail "$name: MPI's banner: $err"
  else pass; fi
}
dp2=("${tiny[@]}" --set parallel.dp=2)
once startup-no-data "no shard matches" -- "$loom" train "$src/configs/default.textproto" "${dp2[@]}" \
  --set "data.train_shards=$tmp/nodata/train_*.bin" --run-dir startup-nodata
[ ! -e startup-nodata ] && pass || fail "startup-no-data: a run directory was made"
expect_ok startup-run "$loom" train "$src/configs/default.textproto" "${dp2[@]}" --run-dir startup-run
once startup-existing-run "already holds a run" -- "$loom" train "$src/configs/default.textproto" "${dp2[@]}" --run-dir startup-run
once startup-resume-other-model "model.d_mlp: 64 -> 32" -- "$loom" train "$src/configs/default.textproto" "${dp2[@]}" \
  --set model.d_mlp=32 --run-dir startup-run --resume
[ ! -e startup-run/flight ] && pass || fail "startup: flight dumps written into the refused run: $(ls startup-run/flight)"
# Ranks started by mpirun directly find it themselves: rank 0 says it once.
once startup-ranks-no-data "no shard matches" -- mpirun --quiet --oversubscribe --allow-run-as-root -np 2 \
  "$loom" train "$src/configs/default.textproto" "${dp2[@]}" --set "data.train_shards=$tmp/nodata/train_*.bin" \
  --run-dir startup-ranks

# --- bad shards ---
mkdir bad
head -c 2000 data/train_000000.bin >bad/train_000000.bin
expect_error truncated-shard "is truncated" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set "data.train_shards=$tmp/bad/train_*.bin" --run-dir r2
printf 'garbage that is long enough to hold a header? no, but longer than nothing at all %01000d' 0 >bad/val_000000.bin
expect_error corrupt-shard "not a token shard" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set "data.train_shards=$tmp/bad/val_*.bin" --run-dir r3
expect_error no-shards "no shard matches" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set "data.train_shards=$tmp/none_*.bin" --run-dir r4

[ ! -e r2 ] && [ ! -e r4 ] && pass || fail "a run that could not start left a run directory"

# --- hostile input: each ends with a message and status 1, nothing started or overwritten ---
expect_error config-directory "config / is not a regular file (a directory)" -- "$loom" train /
expect_error config-device "config /dev/zero is not a regular file (a device or special file)" -- "$loom" train /dev/zero
expect_error config-proc-mem "cannot read config /proc/self/mem: Input/output error" -- "$loom" train /proc/self/mem
head -c 2000000 /dev/zero | tr '\0' ' ' >huge.textproto
expect_error config-huge "config huge.textproto is 2000000 bytes; a config is at most 1048576" -- "$loom" train huge.textproto
expect_error threads-huge "runtime.threads (100000) is larger than loom accepts" -- "$loom" train "$src/configs/default.textproto" --set runtime.threads=100000
expect_error threads-max "runtime.threads (2147483647) is larger than loom accepts" -- "$loom" train "$src/configs/default.textproto" --set runtime.threads=2147483647
expect_error loops-huge "model.loops (2147483647) is larger than loom accepts" -- "$loom" train "$src/configs/default.textproto" --set model.loops=2147483647
expect_error layers-huge "model.block_layers (2147483647) is larger than loom accepts" -- "$loom" train "$src/configs/default.textproto" --set model.block_layers=2147483647
expect_error lr-inf '"inf" is not a valid number' -- "$loom" train "$src/configs/default.textproto" --set optim.lr=inf
expect_error too-big-for-memory "parameters and gradients" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set model.d_model=65536 --set model.n_heads=64 --set model.d_mlp=262144 --run-dir r5
[ ! -e r5 ] && pass || fail "a layout too big for memory left a run directory"
if env -u SLURM_JOB_ID "$loom" plan "$src/configs/default.textproto" --set model.d_model=65536 --set model.n_heads=64 \
     --set model.d_mlp=262144 >plan.txt 2>&1; then fail "loom plan accepted a 3 TiB layout"
elif grep -qF "cannot run this layout on this machine" plan.txt; then pass
else fail "loom plan of a 3 TiB layout: $(tail -2 plan.txt)"; fi
expect_error world-huge "more than 8 ranks per core" -- "$loom" train "$src/configs/default.textproto" --set parallel.dp=100000 --set train.global_batch=1600000
expect_error checkpoint-dir-unwritable "checkpoint.directory /proc/loom-checkpoints cannot be written" -- \
  "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set checkpoint.directory=/proc/loom-checkpoints --run-dir r6
# Two runs into one directory: the second is refused while the first holds it (the first runs
# until SIGUSR1 stops it with a checkpoint: exit status 75).
"$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=100000 --run-dir locked >locked.txt 2>&1 &
first=$!
sleep 1
expect_error run-dir-locked "is in use by another loom train (pid" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir locked
kill -USR1 "$first"
wait "$first"
[ $? -eq 75 ] && pass || fail "the run holding the directory did not stop with 75: $(tail -2 locked.txt)"
"$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=100000 --resume --run-dir locked >locked.txt 2>&1 &
first=$!
sleep 1
expect_error resume-locked "is in use by another loom train (pid" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=100000 --resume --run-dir locked
kill -USR1 "$first"
wait "$first"
[ $? -eq 75 ] && pass || fail "the resumed run holding the directory did not stop with 75: $(tail -2 locked.txt)"
# Export never replaces a device, a checkpoint's own file, or an existing file without --force.
expect_error export-device "--safetensors /dev/full exists and is not a regular file" -- "$loom" export run/checkpoints/step_0000008 --safetensors /dev/full
[ -c /dev/full ] && pass || fail "/dev/full is no longer a device"
expect_error export-into-checkpoint "is inside a checkpoint folder" -- "$loom" export run/checkpoints/step_0000008 --safetensors run/checkpoints/step_0000008/rank_00000.bin --force
expect_error export-existing "model.safetensors exists; pass --force" -- "$loom" export run/checkpoints/step_0000008 --safetensors model.safetensors
expect_ok export-force "$loom" export run/checkpoints/step_0000008 --safetensors model.safetensors --force
expect_error sample-temperature "--temperature must be a number ≥ 0" -- "$loom" sample run/checkpoints/step_0000008 --temperature nan
expect_error sample-temperature-negative "--temperature must be a number ≥ 0" -- "$loom" sample run/checkpoints/step_0000008 --temperature -1
expect_error sample-top-k "--top-k must not be negative" -- "$loom" sample run/checkpoints/step_0000008 --top-k -1
expect_error prepare-val-fraction "--val-fraction must be in [0, 1), got nan" -- "$loom" prepare --input "$src/core" --output vf --val-fraction nan
# A shard truncated, or overwritten with random bytes, while a run reads it: an error naming it,
# and (one process) a checkpoint of the last sound step.
for damage in truncate overwrite; do
  mkdir -p "changing-$damage"
  cp data/train_000000.bin "changing-$damage/"
  "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set train.steps=100000 \
    --set checkpoint.interval=0 --set train.eval_interval=0 --set logging.sample_tokens=0 \
    --set "data.train_shards=$tmp/changing-$damage/train_*.bin" --run-dir "run-$damage" >"$damage.txt" 2>&1 &
  job=$!
  sleep 1.5
  shard="changing-$damage/train_000000.bin"
  if [ "$damage" = truncate ]; then truncate -s 3000 "$shard"
  else head -c 200000 /dev/urandom | dd of="$shard" bs=1024 seek=1 conv=notrunc status=none; fi
  wait "$job"
  rc=$?
  if [ "$rc" -eq 1 ] && grep -qF "changed while the run read it" "$damage.txt" &&
     grep -qF "was saved)" "$damage.txt" && [ -n "$(ls "run-$damage/checkpoints")" ]; then pass
  else fail "shard $damage during a run: exit $rc, $(tail -1 "$damage.txt")"; fi
done

# Checkpoints that lie: empty metadata, a folder renamed to a later step; a run stopped before its
# first checkpoint resumes from the start.
expect_ok lying-run "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set checkpoint.interval=2 \
  --set checkpoint.keep_last=0 --set logging.sample_tokens=0 --run-dir lying
: >lying/checkpoints/step_0000006/checkpoint.textproto
mv lying/checkpoints/step_0000002 lying/checkpoints/step_0000010
expect_ok lying-resume "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set checkpoint.interval=2 \
  --set checkpoint.keep_last=0 --set logging.sample_tokens=0 --set train.steps=8 --run-dir lying --resume
grep -qF "holds step 2, not the step its name says" lying/train.log && grep -qF "is incomplete" lying/train.log &&
  grep -qF "resumed from lying/checkpoints/step_0000004 at step 4" lying/train.log && pass ||
  fail "resume did not skip the lying checkpoints: $(grep -E 'warning|resumed' lying/train.log)"
mkdir -p early/checkpoints && echo '{"step":1}' >early/metrics.jsonl
expect_ok resume-before-first "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --run-dir early --resume
grep -qF "no checkpoint in early/checkpoints yet" early/train.log && [ "$(wc -l <early/metrics.jsonl)" -eq 6 ] &&
  pass || fail "a run stopped before its first checkpoint did not start again"

# Asynchronous checkpoints: the same bytes as synchronous ones; kill -9 at random moments while
# they are written in the background, then --resume: the newest complete checkpoint loads and the
# run ends exactly as an uninterrupted one.
async=("${tiny[@]}" --set model.d_model=256 --set model.n_heads=4 --set model.d_mlp=1024
       --set checkpoint.interval=1 --set checkpoint.keep_last=2 --set logging.sample_tokens=0
       --set train.eval_interval=0 --set train.steps=12)
expect_ok async-reference "$loom" train "$src/configs/default.textproto" "${async[@]}" --run-dir async-sync
expect_ok async-run "$loom" train "$src/configs/default.textproto" "${async[@]}" --set checkpoint.async=true --run-dir async-bg
cmp -s async-sync/checkpoints/step_0000012/rank_00000.bin async-bg/checkpoints/step_0000012/rank_00000.bin &&
  grep -q "written in the background" async-bg/train.log && pass || fail "async checkpoints differ from synchronous ones"
for trial in 1 2 3 4 5; do
  rm -rf async-kill
  "$loom" train "$src/configs/default.textproto" "${async[@]}" --set checkpoint.async=true --run-dir async-kill >/dev/null 2>&1 &
  job=$!
  tenths=$((RANDOM % 15 + 10))  # 1.0–2.4 s: within the run's 12 steps of a checkpoint each
  sleep "$((tenths / 10)).$((tenths % 10))"
  kill -9 "$job" 2>/dev/null
  wait "$job" 2>/dev/null
  if [ -z "$(ls async-kill/checkpoints 2>/dev/null | grep step_)" ]; then  # killed before the first
    echo "async kill trial $trial: no checkpoint yet"
    continue
  fi
  if { [ -d async-kill/checkpoints/step_0000012 ] ||  # it finished before the kill
       "$loom" train "$src/configs/default.textproto" "${async[@]}" --set checkpoint.async=true \
         --run-dir async-kill --resume >async-kill.txt 2>&1; } && cmp -s async-sync/checkpoints/step_0000012/rank_00000.bin async-kill/checkpoints/step_0000012/rank_00000.bin; then pass
  else fail "async kill trial $trial: $(grep -E 'resumed|error' async-kill.txt | head -2)"; fi
done

# A full disk: the failed save says why and leaves no partial folder behind (root: a small tmpfs).
if [ "$(id -u)" -eq 0 ] && mkdir -p full && mount -t tmpfs -o size=2M tmpfs full 2>/dev/null; then
  expect_error disk-full "No space left on device" -- "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
    --set model.d_model=128 --set model.n_heads=4 --set model.d_mlp=512 --run-dir full/run
  [ -z "$(ls -A full/run/checkpoints | grep -vx OWNER)" ] && pass || fail "a failed save left $(ls -A full/run/checkpoints)"
  umount full
else
  echo "skipped: disk-full case (needs root to mount a small tmpfs)"
fi

# Issue 22, item 8: two runs sharing one absolute checkpoint.directory destroyed each other (run
# B, another seed, pruned run A's checkpoints). The directory belongs to the run that first used
# it: another is refused, naming it; the owner resumes, and prunes only its own checkpoints.
quiet=("${tiny[@]}" --set logging.sample_tokens=0 --set checkpoint.keep_last=1)
expect_ok shared-a "$loom" train "$src/configs/default.textproto" "${quiet[@]}" \
  --set "checkpoint.directory=$tmp/shared-ckpt" --run-dir shared-a
expect_error shared-b "belongs to another run, the one in $tmp/shared-a" -- "$loom" train \
  "$src/configs/default.textproto" "${quiet[@]}" --set train.seed=7 \
  --set "checkpoint.directory=$tmp/shared-ckpt" --run-dir shared-b
[ "$(ls shared-ckpt | grep step_)" = step_0000006 ] && pass ||
  fail "run A's checkpoints after run B was refused: $(ls shared-ckpt)"
expect_ok shared-a-resume "$loom" train "$src/configs/default.textproto" "${quiet[@]}" \
  --set "checkpoint.directory=$tmp/shared-ckpt" --set train.steps=9 --resume --run-dir shared-a
[ "$(ls shared-ckpt | grep step_)" = step_0000009 ] && pass ||
  fail "the owner's resume and keep_last 1: $(ls shared-ckpt)"

# Issue 22, item 11: checkpoint metadata was trusted. data_position -1 aborted the resumed run
# (an internal check), optimizer_step -1 trained NaN into a checkpoint that became the newest,
# a folder step_99999999999999999999 ended in "error: stol". Each such checkpoint is unusable,
# naming the file and field, and --resume falls back to the one before.
expect_ok meta-run "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set logging.sample_tokens=0 --run-dir meta
sed -i 's/^data_position: .*/data_position: -1/' meta/checkpoints/step_0000006/checkpoint.textproto
expect_ok meta-data-position "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set logging.sample_tokens=0 --set train.steps=9 --resume --run-dir meta
grep -qF "checkpoint.textproto: data_position -1 is not step 6" meta/train.log &&
  grep -qF "resumed from meta/checkpoints/step_0000003 at step 3" meta/train.log && pass ||
  fail "data_position -1: $(grep -E 'warning|resumed' meta/train.log)"
sed -i 's/^optimizer_step: .*/optimizer_step: -1/' meta/checkpoints/step_0000009/checkpoint.textproto
expect_error meta-optimizer-step-export "optimizer_step -1 is outside [0, step 9]" -- \
  "$loom" export meta/checkpoints/step_0000009 --safetensors meta.safetensors
expect_ok meta-optimizer-step "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set logging.sample_tokens=0 --set train.steps=12 --resume --run-dir meta
grep -qF "resumed from meta/checkpoints/step_0000006 at step 6" meta/train.log && pass ||
  fail "optimizer_step -1: $(tail -3 meta/train.log)"
mkdir meta/checkpoints/step_99999999999999999999
cp meta/checkpoints/step_0000012/* meta/checkpoints/step_99999999999999999999/
expect_ok meta-huge-step "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set logging.sample_tokens=0 --set train.steps=15 --resume --run-dir meta
grep -qF "resumed from meta/checkpoints/step_0000012 at step 12" meta/train.log && pass ||
  fail "step_99999999999999999999: $(tail -2 meta/train.log)"
expect_error meta-huge-step-sample "not the step its name says" -- \
  "$loom" sample meta/checkpoints/step_99999999999999999999

# A checkpoint never holds a non-finite value: a learning rate that overflows the weights stops
# the run at the save, naming the tensor, with no checkpoint written.
expect_error nonfinite-save 'checkpoint of step 1 not written: params of tensor "wte" holds' -- \
  "$loom" train "$src/configs/default.textproto" "${tiny[@]}" --set logging.sample_tokens=0 \
  --set optim.lr=3.4e38 --set optim.warmup_steps=0 --set checkpoint.interval=1 --run-dir nonfinite
[ -z "$(ls nonfinite/checkpoints | grep step_)" ] && pass ||
  fail "a non-finite checkpoint was written: $(ls nonfinite/checkpoints)"

# A tp 2 checkpoint whose rank 1 wte piece moved one row up (same element count, checksums
# intact) exported with rows 128–255 shifted and row 256 zero: pieces must hold every element
# exactly once.
expect_ok shifted-run "$loom" train "$src/configs/default.textproto" "${tiny[@]}" \
  --set logging.sample_tokens=0 --set parallel.tp=2 --set runtime.threads=1 --run-dir shifted
meta=shifted/checkpoints/step_0000006/checkpoint.textproto
grep -A6 'name: "wte"' "$meta" | grep -q "shard_offset: 129" && pass || fail "no wte piece at row 129"
sed -i '0,/shard_offset: 129/s//shard_offset: 128/' "$meta"
expect_error shifted-export 'tensor "wte": two of its pieces hold row 128, column 0' -- \
  "$loom" export shifted/checkpoints/step_0000006 --safetensors shifted.safetensors
[ ! -e shifted.safetensors ] && pass || fail "a checkpoint with a shifted piece was exported"

# A data.textproto that no data set has is refused by loom train (beside the shards) and loom
# sample (the run directory's copy), naming the file and field.
mkdir -p bad-info
cp data/*.bin bad-info/
for edit in "s/vocab_size: 257/vocab_size: 0/|vocab_size 0 is outside [1, 65536]" \
            "s/end_of_text: 256/end_of_text: 300/|end_of_text 300 is outside the vocabulary" \
            "s/train_tokens: .*/train_tokens: -5/|train_tokens -5 and train_bytes"; do
  sed "${edit%%|*}" data/data.textproto >bad-info/data.textproto
  expect_error "info-train ${edit%%|*}" "bad-info/data.textproto: ${edit#*|}" -- "$loom" train \
    "$src/configs/default.textproto" "${tiny[@]}" --set "data.train_shards=$tmp/bad-info/train_*.bin" \
    --set "data.val_shards=$tmp/bad-info/val_*.bin" --run-dir bad-info-run
  sed "${edit%%|*}" data/data.textproto >meta/data.textproto
  expect_error "info-sample ${edit%%|*}" "meta/data.textproto: ${edit#*|}" -- \
    "$loom" sample meta/checkpoints/step_0000015 --tokens 5
done
rm meta/data.textproto
mkdir meta/data.textproto
expect_error info-sample-directory "data.textproto is a directory" -- \
  "$loom" sample meta/checkpoints/step_0000015 --tokens 5

finish
