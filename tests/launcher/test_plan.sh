#!/usr/bin/env bash
# `loom plan` as a user runs it: world size, process groups as global ranks, accumulation
# steps, memory per rank, whether `loom train` can run the layout, and a layout that does not
# divide the model (exit status 1, message naming the fields); with --hostfile/--hosts the node of
# each rank, the groups across nodes and the tp-across-nodes refusal.
# Usage: test_plan.sh LOOM_BINARY SOURCE_DIR
set -u
loom=$1
src=$2
config="$src/configs/default.textproto"
failures=0
passes=0

pass() { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# plan NAME --set ...: runs loom plan on the default config; its stdout goes to $out.
plan() {
  local name=$1
  shift
  if ! out=$("$loom" plan "$config" "$@" 2>&1); then
    fail "$name: loom plan exited $?: $out"
    out=""
  fi
}

# expect NAME REGEX: the last plan's output has a line matching REGEX (extended regex).
expect() {
  if grep -qE -- "$2" <<<"$out"; then pass; else fail "$1: no line matching '$2' in:"$'\n'"$out"; fi
}

# The default model (V 257, C 128, F 512, T 128, learned positions, LayerNorm, tied embeddings,
# 4 unique layers) has 257·128 + 128·128 + 4·198272 + 256 = 842624 parameters:
# 3.21 MiB of fp32 parameters, 3.21 of gradients, 6.43 of AdamW state.

# --- dp = 4 ---
plan dp4 --set parallel.dp=4 --set train.micro_batch=4
expect dp4-world '^  world size  4 = dp 4 × pp 1 × sp 1 × tp 1$'
expect dp4-model '842624 parameters, 10 unrolled layers'
expect dp4-accum 'global_batch 16 = micro_batch 4 × dp 4 × 1 accumulation step per rank'
expect dp4-dp '^  dp +1 group of 4 +\{0,1,2,3\}$'
expect dp4-dpsp '^  dp×sp +1 group of 4 +\{0,1,2,3\}$'
expect dp4-tp '^  tp +4 groups of 1 +\{0\} \{1\} \{2\} \{3\}$'
expect dp4-pp '^  pp +4 groups of 1 +\{0\} \{1\} \{2\} \{3\}$'
expect dp4-memory-exact '^memory per rank \(FP32, MiB\)$'
expect dp4-params '^  parameters +3\.21 +842624 floats$'
expect dp4-grads '^  gradients +3\.21 '
expect dp4-optim '^  optimizer state +6\.43 +AdamW m and v, not sharded'
expect dp4-act '^  activations +[0-9]+\.[0-9][0-9] +micro_batch 4 × seq_len 128'
expect dp4-total '^  total +[0-9]+\.[0-9][0-9]$'
expect dp4-trainable '^loom plan: can run this layout on this machine \(4 ranks\)'
# The total is the sum of the four lines above it (to rounding).
sum=$(awk '/^  (parameters|gradients|optimizer state|activations) / {
             for (i = 1; i <= NF; ++i) if ($i ~ /^[0-9]+\.[0-9][0-9]$/) { s += $i; break } }
           /^  total / { t = $2 } END { d = s - t; if (d < 0) d = -d; print (d <= 0.02) ? "ok" : s " vs " t }' <<<"$out")
[ "$sum" = ok ] && pass || fail "dp4: total is not the sum of its parts ($sum)"

# ZeRO-1 shards the AdamW state over dp: 6.43 / 4.
plan zero --set parallel.dp=4 --set train.micro_batch=4 --set parallel.zero_stage=1
expect zero-optim '^  optimizer state +1\.61 +AdamW m and v, sharded over dp 4 \(ZeRO-1\)$'

# Accumulation: global 16 / (micro 2 · dp 2) = 4 micro-batches per step.
plan accum --set parallel.dp=2 --set train.micro_batch=2
expect accum '× dp 2 × 4 accumulation steps per rank'

# --- tp = 2, dp = 2: tensor fastest in the rank order ---
plan tp2dp2 --set parallel.tp=2 --set parallel.dp=2 --set train.micro_batch=8
expect tp2dp2-world '^  world size  4 = dp 2 × pp 1 × sp 1 × tp 2$'
expect tp2dp2-tp '^  tp +2 groups of 2 +\{0,1\} \{2,3\}$'
expect tp2dp2-dp '^  dp +2 groups of 2 +\{0,2\} \{1,3\}$'
expect tp2dp2-dpsp '^  dp×sp +2 groups of 2 +\{0,2\} \{1,3\}$'
expect tp2dp2-exact '^memory per rank \(FP32, MiB\)$'
# Per rank: wte 129·128 (257 rows split, padded to 258) + wpe 16384 + 4·99520 + 256 = 431232.
expect tp2dp2-params '^  parameters +1\.65 +431232 floats$'
expect tp2dp2-trainable '^loom plan: can run this layout on this machine \(4 ranks\)'

# --- pp = 2, dp = 2: the 10 unrolled layers split 5 / 5 ---
plan pp2 --set parallel.pp=2 --set parallel.dp=2 --set train.micro_batch=4
expect pp2-pp '^  pp +2 groups of 2 +\{0,2\} \{1,3\}$'
expect pp2-dp '^  dp +2 groups of 2 +\{0,1\} \{2,3\}$'
expect pp2-schedule '^pipeline ONE_F_ONE_B: 2 stages × 1 chunk, 2 micro-batches per step; bubble 33\.3%'
expect pp2-stage0 '^      0 .*  0–4: prelude\.0, block\.0–1 × iterations 0–1 \('
expect pp2-stage1 '^      1 .*  5–9: block\.0–1 × iterations 2–3, coda\.0 \('
# 1F1B: stage 0 keeps 2 micro-batches' activations, stage 1 one (the stage table's slots).
expect pp2-slots0 '^      0( +[0-9.]+){3} +2 × [0-9.]+ '
expect pp2-slots1 '^      1( +[0-9.]+){3} +1 × [0-9.]+ '
# Stage 0 holds the embeddings (wte 257·128 + wpe 128·128), the prelude and the block:
# 32896 + 16384 + 3 · 198272 = 644096 floats: the block once however many iterations it runs.
expect pp2-params '^  parameters +2\.46 +'"$((257 * 128 + 128 * 128 + 3 * 198272))"' floats \(stage 0'
plan gpipe --set parallel.pp=2 --set train.micro_batch=2 --set parallel.pipeline_schedule=GPIPE
expect gpipe-slots '^      0( +[0-9.]+){3} +8 × [0-9.]+ '
plan interleaved --set parallel.pp=2 --set train.micro_batch=2 \
  --set parallel.pipeline_schedule=INTERLEAVED_1F1B --set parallel.virtual_stages=2
expect interleaved-bubble 'INTERLEAVED_1F1B: 2 stages × 2 chunks, 8 micro-batches per step; bubble 5\.9%'
expect interleaved-chunk '^ {60,}[0-9]+–[0-9]+: block'
# Zero-bubble H1: 1F1B's slots (2 on stage 0), each larger by the output gradients W needs;
# the bubble its own simulation leaves (1F1B's at m = 8 would be 11.1%).
plan zb --set parallel.pp=2 --set train.micro_batch=2 --set parallel.pipeline_schedule=ZERO_BUBBLE_H1
expect zb-bubble '^pipeline ZERO_BUBBLE_H1: 2 stages × 1 chunk, 8 micro-batches per step; bubble 7\.7% \(simulated'
expect zb-slots '^      0( +[0-9.]+){3} +2 × [0-9.]+ '
# Zero-bubble V: rank 0 runs the first and the last piece; 2·pp slots of half-stage chunks.
plan zbv --set parallel.pp=2 --set train.micro_batch=2 --set parallel.pipeline_schedule=ZERO_BUBBLE_V \
  --set parallel.virtual_stages=2
expect zbv-bubble '^pipeline ZERO_BUBBLE_V: 2 stages × 2 chunks, 8 micro-batches per step; bubble 4\.8% \(simulated with F : B : W = 5 : 6 : 4'
expect zbv-slots '^      0( +[0-9.]+){3} +4 × [0-9.]+ .* 0–[0-9]+: prelude'
expect zbv-last '^ {60,}[0-9]+–9: .*coda'
err=$("$loom" plan "$config" --set parallel.pp=4 2>&1 >/dev/null)
grep -qF "must be at least parallel.pp (4)" <<<"$err" && pass || fail "pp=4, m=1: $err"

# --- sp = 2, tp = 2: ranks with the same pp and tp coordinates form dp×sp ---
plan sp2 --set parallel.sp=2 --set parallel.tp=2 --set parallel.dp=2 --set train.micro_batch=8
expect sp2-sp '^  sp +4 groups of 2 +\{0,2\} \{1,3\} \{4,6\} \{5,7\}$'
expect sp2-dp '^  dp +4 groups of 2 +\{0,4\} \{1,5\} \{2,6\} \{3,7\}$'
expect sp2-dpsp '^  dp×sp +2 groups of 4 +\{0,2,4,6\} \{1,3,5,7\}$'
expect sp2-tokens 'seq_len 128 \(64 tokens per sp rank\)'

# --- runtime.precision BF16: fp32 parameters, gradients and AdamW state as at FP32; bf16
# activations (half the arena, within the 64-byte alignment of each region) and the weights'
# bf16 copy (1.61 MiB: 842624 × 2 bytes) ---
plan fp32-arena --set runtime.threads=1
activations_fp32=$(grep -oE '^  activations +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
plan bf16 --set runtime.threads=1 --set runtime.precision=BF16
expect bf16-header '^memory per rank \(BF16: fp32 master weights, gradients and AdamW state; bf16 activations, MiB\)$'
expect bf16-params '^  parameters +3\.21 +842624 floats$'
expect bf16-optim '^  optimizer state +6\.43 '
expect bf16-copy '^  weight copy +1\.61 +bf16 copy of the parameters'
activations_bf16=$(grep -oE '^  activations +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
if awk -v a="${activations_bf16:-0}" -v b="${activations_fp32:-0}" \
     'BEGIN { r = a / b; exit !(b > 0 && r > 0.49 && r < 0.52) }'; then
  pass
else
  fail "bf16 activations ${activations_bf16:-?} MiB are not about half of fp32's ${activations_fp32:-?}"
fi

# --- sp = 4: exact memory (the rank's 32 rows of each sequence and the ring's buffers), less
# activation memory than sp = 1, and the longest sequence in a budget growing with sp ---
plan sp1-budget --set runtime.threads=1 --memory-gb 0.25
expect sp1-longest '^  train\.seq_len [0-9]+ \([0-9]+ tokens per sp rank\): [0-9.]+ MiB per rank'
longest_sp1=$(grep -oE 'train\.seq_len [0-9]+' <<<"$out" | grep -oE '[0-9]+')
activations_sp1=$(grep -oE '^  activations +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
plan sp4 --set parallel.sp=4 --set runtime.threads=1 --memory-gb 0.25
expect sp4-exact '^memory per rank \(FP32, MiB\)$'
expect sp4-rows 'micro_batch 16 × seq_len 128 \(32 rows per sp rank\)'
expect sp4-ring '^  sp 4: activations of the rank.s rows; ring attention'
longest_sp4=$(grep -oE 'train\.seq_len [0-9]+' <<<"$out" | grep -oE '[0-9]+')
activations_sp4=$(grep -oE '^  activations +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
if [ -n "${longest_sp1:-}" ] && [ -n "${longest_sp4:-}" ] &&
   [ $((longest_sp4 % 8)) -eq 0 ] && [ "$longest_sp4" -gt $((2 * longest_sp1)) ]; then
  pass
else
  fail "longest sequence: sp 1 ${longest_sp1:-?}, sp 4 ${longest_sp4:-?} (expected a multiple of 8, over twice sp 1's)"
fi
if awk -v a="${activations_sp4:-0}" -v b="${activations_sp1:-0}" 'BEGIN { exit !(a > 0 && a < 0.3 * b) }'; then
  pass
else
  fail "activations: sp 4 ${activations_sp4:-?} MiB, not under 0.3 × sp 1's ${activations_sp1:-?}"
fi
err=$("$loom" plan "$config" --memory-gb lots 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && grep -qF -- '--memory-gb: "lots" is not a positive number of GiB' <<<"$err" && pass ||
  fail "--memory-gb lots: exit status $rc, message: $err"

# --- a big world: one row per kind of group, its first two groups and the last ---
plan big --set parallel.dp=32 --set parallel.tp=4 --set train.micro_batch=1 --set train.global_batch=32
expect big-world '^  world size  128 = dp 32 × pp 1 × sp 1 × tp 4$'
expect big-tp '^  tp +32 groups of 4 +\{0,1,2,3\} \{4,5,6,7\} … \{124,125,126,127\}$'
expect big-dp '^  dp +4 groups of 32 +\{0,4,…,124\} \{1,5,…,125\} … \{3,7,…,127\}$'

# --- layouts that do not divide ---
err=$("$loom" plan "$config" --set parallel.tp=3 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && pass || fail "tp=3: exit status $rc, expected 1 ($err)"
grep -qF "parallel.tp (3) must divide model.n_heads (4)" <<<"$err" && pass ||
  fail "tp=3: message lacks 'parallel.tp (3) must divide model.n_heads (4)': $err"
err=$("$loom" plan "$config" --set parallel.dp=3 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && grep -qF "train.global_batch (16) must be a multiple of" <<<"$err" && pass ||
  fail "dp=3: exit status $rc, message: $err"
err=$("$loom" plan 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && grep -qF "expected exactly one CONFIG" <<<"$err" && pass ||
  fail "no CONFIG: exit status $rc, message: $err"

# --- placement over nodes (--hostfile, --hosts) ---
hosts=$(mktemp)
printf '# two nodes\nnode1 slots=2\nnode2 slots=2\n' >"$hosts"
plan hostfile --set parallel.dp=2 --set parallel.tp=2 --set train.micro_batch=8 --hostfile "$hosts"
expect hostfile-nodes '^  node1: ranks 0-1; node2: ranks 2-3$'
expect hostfile-tp '^    tp  none$'
expect hostfile-dp '^    dp  2 of 2: \{0,2\} on node1, node2; \{1,3\} on node1, node2$'
expect hostfile-ok '^loom plan: a layout for other machines \(its ranks go on the nodes of --hostfile '
out=$("$loom" plan "$config" --set parallel.dp=2 --set parallel.tp=2 --set train.micro_batch=8 \
      --hosts node1:3,node2:1 2>&1)
rc=$?
[ "$rc" -eq 1 ] && grep -qF "tensor-parallel group {2,3} would span nodes node1, node2" <<<"$out" &&
  grep -qE '^    tp  1 of 2: \{2,3\} on node1, node2$' <<<"$out" && pass ||
  fail "tp across nodes: exit status $rc, output: $out"
plan allowed --set parallel.dp=2 --set parallel.tp=2 --set train.micro_batch=8 \
  --hosts node1:3,node2:1 --allow-cross-node-tp
expect allowed-ok '^loom plan: a layout for other machines \(its ranks go on the nodes of --hosts\)'
printf 'node1 slots=2\nnode2\n' >"$hosts"
err=$("$loom" plan "$config" --set parallel.dp=2 --set parallel.tp=2 --set train.micro_batch=8 \
      --hostfile "$hosts" 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && grep -qF "$hosts:2: host node2 has no slots=N" <<<"$err" && pass ||
  fail "hostfile without slots: exit status $rc, message: $err"
err=$("$loom" plan "$config" --set parallel.dp=4 --set train.micro_batch=4 --hosts a:1,b:2 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 1 ] && grep -qF "needs 4 ranks but the hosts offer 3 slots" <<<"$err" && pass ||
  fail "too few slots: exit status $rc, message: $err"
rm -f "$hosts"

# --- --help ---
help=$("$loom" plan --help) && grep -q "^usage: loom plan CONFIG" <<<"$help" && pass ||
  fail "loom plan --help"
"$loom" --help | grep -q "^  plan CONFIG" && pass || fail "loom --help does not list plan"

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
