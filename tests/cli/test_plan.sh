#!/usr/bin/env bash
# `loom plan` for a cluster layout: a 4,096-rank layout is judged per rank against
# --memory-gb (this machine's memory only for a layout that would start here), its messages say
# `loom plan`, large worlds and many stages print as tables of short lines, the summary's
# activations are the recompute table's "(this run)" row, and a layout that does not divide is
# refused with values that do; with --cluster the predicted step's parts, a cluster too small or
# malformed refused, the layout search's best accepted as a layout, and `loom bench calibrate`
# (2 ranks) writing a cluster file loom plan reads. (tests/launcher/test_plan.sh checks the layout's figures.)
# Usage: test_plan.sh LOOM_BINARY SOURCE_DIR
set -u
loom=$1
src=$2
config="$src/configs/default.textproto"
source "$src/tests/cli/cli_common.sh"
# Inside a Slurm allocation every layout is for its nodes; these checks judge this machine too.
unset SLURM_JOB_ID

# plan NAME STATUS ARGS...: runs loom plan on the default config with ARGS; it must exit with
# STATUS. Its stdout and stderr go to $out.
plan() {
  local name=$1 status=$2
  shift 2
  out=$("$loom" plan "$config" "$@" 2>&1)
  local rc=$?
  if [ "$rc" -ne "$status" ]; then fail "$name: exit status $rc, expected $status:"$'\n'"$out"; else pass; fi
}

# expect NAME REGEX: the last plan's output has a line matching REGEX (extended regex).
expect() {
  if grep -qE -- "$2" <<<"$out"; then pass; else fail "$1: no line matching '$2' in:"$'\n'"$out"; fi
}

# short_lines NAME: no line of the last plan's output is longer than 200 characters.
short_lines() {
  local long
  long=$(awk 'length($0) > 200 { print NR ": " length($0) " characters" }' <<<"$out" | head -3)
  if [ -z "$long" ]; then pass; else fail "$1: lines over 200 characters: $long"; fi
}

# --- 4,096 ranks (dp 64 × pp 8 × tp 8), 1.7 GiB per rank: for a cluster, not this machine ---
big=(--set parallel.dp=64 --set parallel.tp=8 --set parallel.pp=8 --set model.n_heads=16
     --set model.d_model=2048 --set model.d_mlp=8192 --set model.vocab_size=50257
     --set model.max_seq_len=2048 --set train.seq_len=2048 --set train.global_batch=1024
     --set train.micro_batch=1 --set model.loops=6)
plan big-80 0 "${big[@]}" --memory-gb 80
expect big-80-world '^  world size  4096 = dp 64 × pp 8 × sp 1 × tp 8$'
expect big-80-verdict '^loom plan: can run this layout \(4096 ranks\) within --memory-gb 80 '
expect big-80-need 'it needs up to [0-9.]+ GiB per rank \(stage [0-9]+ of 8, the largest\)'
expect big-80-table '^  total +[0-9]+\.[0-9][0-9]$'
short_lines big-80
grep -q "loom train:" <<<"$out" && fail "big-80: loom plan speaks as loom train: $out" || pass
plan big-1 1 "${big[@]}" --memory-gb 1
expect big-1-refused '^loom plan: cannot run this layout within --memory-gb 1 \(1\.0 GiB per rank\):$'
expect big-1-parts 'it needs up to [0-9.]+ GiB per rank \(stage [0-9]+ of 8, the largest\): parameters'
short_lines big-1
# Without a budget it is a layout for other machines: the need per rank, and no refusal.
plan big-unknown 0 "${big[@]}"
expect big-unknown '^loom plan: a layout for other machines \(4096 ranks, more than 8 per core'
expect big-unknown-need 'it needs up to [0-9.]+ GiB per rank'
grep -q "cannot run this layout on this machine" <<<"$out" &&
  fail "big-unknown: judged against this machine: $out" || pass

# On the nodes of a hostfile (512 nodes of 8): the placement in a few short lines.
for i in $(seq 1 512); do echo "node$i slots=8"; done >hosts512
plan big-hosts 0 "${big[@]}" --hostfile hosts512
expect big-hosts-nodes '^  node1: ranks 0-7; node2: ranks 8-15; node3: ranks 16-23; …; node512: ranks 4088-4095 \(512 nodes\)$'
expect big-hosts-tally '^  8 ranks on 512 nodes$'
expect big-hosts-dp '^    dp  64 of 64, e\.g\. \{0,8,…,504\} on node1, node2, …, node64 \(64 nodes\)$'
expect big-hosts-verdict '^loom plan: a layout for other machines \(its ranks go on the nodes of --hostfile hosts512\):$'
expect big-hosts-node '[0-9.]+ GiB on the fullest node'
short_lines big-hosts
plan big-hosts-budget 1 "${big[@]}" --hostfile hosts512 --memory-gb 1
expect big-hosts-budget '^loom plan: cannot run this layout within --memory-gb 1 '
# The groups of a large world: one row per kind, its first two groups and the last.
plan big-groups 0 "${big[@]}" --memory-gb 80
expect big-groups-tp '^  tp +512 groups of 8 +\{0,1,…,7\} \{8,9,…,15\} … \{4088,4089,…,4095\}$'
expect big-groups-pp '^  pp +512 groups of 8 +\{0,512,…,3584\} \{1,513,…,3585\} … \{511,1023,…,4095\}$'

# --- 100,000 ranks: in seconds, short lines, the dp group in one row ---
start=$SECONDS
plan dp-100000 0 --set parallel.dp=100000 --set train.global_batch=100000 --set train.micro_batch=1
[ $((SECONDS - start)) -le 10 ] && pass || fail "dp-100000 took $((SECONDS - start)) s"
expect dp-100000-group '^  dp     1 group of 100000  +\{0,1,…,99999\}$'
short_lines dp-100000

# --- 16 stages: a table of one row per stage ---
plan pp16 0 --set parallel.pp=16 --set model.loops=14 --set train.global_batch=64 --set train.micro_batch=2
expect pp16-head '^  stage +params +AdamW +activations +slots +buffers +total +unrolled layers \(cost\)$'
rows=$(grep -cE '^ +[0-9]+ +[0-9]+\.[0-9] +[0-9]+\.[0-9] +[0-9]+\.[0-9][0-9] +[0-9]+ × [0-9.]+ ' <<<"$out")
[ "$rows" -eq 16 ] && pass || fail "pp16: $rows stage rows, expected 16:"$'\n'"$out"
expect pp16-stage0 '^      0 .*  0–0: prelude\.0 \(0\.[0-9]+\)$'
expect pp16-stage15 '^     15 .*  29–29: coda\.0 \(0\.[0-9]+\)$'
short_lines pp16
awk 'length($0) > 120' <<<"$out" | grep -q . && fail "pp16: lines over 120 columns: $out" || pass

# --- the summary's activations are the recompute table's "(this run)" row: the largest stage's ---
# (a large vocabulary makes stage 0 the largest while stage 1 keeps the most activations)
agree() {
  local name=$1 summary row
  summary=$(grep -oE '^  activations +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  row=$(grep -E '\(this run\)$' <<<"$out" | awk '{ print $2 }')
  if [ -n "$summary" ] && [ "$summary" = "$row" ]; then pass; else
    fail "$name: summary activations ${summary:-?} but the (this run) row ${row:-?}:"$'\n'"$out"
  fi
  summary=$(grep -oE '^  total +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  row=$(grep -E '\(this run\)$' <<<"$out" | awk '{ print $3 }')
  [ -n "$summary" ] && [ "$summary" = "$row" ] && pass ||
    fail "$name: summary total ${summary:-?} but the (this run) row ${row:-?}"
}
plan vocab-pp8 0 --set parallel.pp=8 --set model.n_heads=16 --set model.d_model=1024 \
  --set model.d_mlp=4096 --set model.vocab_size=65536 --set model.max_seq_len=1024 \
  --set train.seq_len=1024 --set train.global_batch=16 --set train.micro_batch=1 --set model.loops=6
agree vocab-pp8
expect vocab-pp8-largest '^  parameters +[0-9.]+ +[0-9]+ floats \(stage 0, the largest\)$'
expect vocab-pp8-most '^  \(stage 1 keeps the most activations: [0-9.]+ MiB, [0-9.]+ MiB in all\)$'
plan pp16-agree 0 --set parallel.pp=16 --set model.loops=14 --set train.global_batch=64 --set train.micro_batch=2
agree pp16
plan recompute-agree 0 --set train.recompute=SQRT --set parallel.pp=2 --set train.micro_batch=4
agree recompute

# --- a local layout is still judged against this machine, in loom plan's words ---
plan local-3tib 1 --set model.d_model=65536 --set model.n_heads=64 --set model.d_mlp=262144
expect local-3tib '^loom plan: cannot run this layout on this machine:$'
expect local-3tib-need 'this layout needs [0-9.]+ GiB per rank × 1 rank but this machine has'
plan local-small 0 --set parallel.dp=2 --set train.micro_batch=8
expect local-small '^loom plan: can run this layout on this machine \(2 ranks\)'

# --- refused layouts name values that work ---
expect_error tp-heads "parallel.tp (5) must divide model.n_heads (12): each tensor-parallel rank holds whole heads; try parallel.tp 1, 2, 3, 4, 6 or 12" -- "$loom" plan "$config" \
  --set model.n_heads=12 --set model.d_model=768 --set model.d_mlp=3072 --set parallel.tp=5
expect_error batch "try train.global_batch 48 (a multiple of micro_batch × dp = 48) or parallel.dp 1" -- "$loom" plan "$config" \
  --set parallel.dp=3
expect_error micro-batches "try train.global_batch 64 (a multiple of micro_batch × dp = 16, at least pp × micro_batch × dp = 64) or train.micro_batch 1, 2 or 4" -- "$loom" plan "$config" \
  --set parallel.pp=4
expect_error seq-len "try train.seq_len 126 or 132 (model.max_seq_len raised with it) or parallel.sp 1, 2, 4, 8, 16, 32 or 64" -- "$loom" plan "$config" \
  --set parallel.sp=3
expect_error pieces "try parallel.pp ≤ 10 or model.loops ≥ 7" -- "$loom" plan "$config" \
  --set parallel.pp=16 --set train.global_batch=64 --set train.micro_batch=2

# --- the step time on a cluster (--cluster, --nodes), and this machine's calibrated file ---
plan cluster 0 --set parallel.tp=8 --set parallel.dp=4 --set model.n_heads=16 \
  --set train.micro_batch=4 --cluster "$src/cluster/dgx_a100.textproto"
expect cluster-header '^step time on 4 nodes of DGX A100 \(32 of 32 devices'
for part in compute recompute tp sp bubble pp_p2p dp replica optimizer; do
  expect "cluster-$part" "^  $part +[0-9.]+ ms +[0-9.]+%"
done
expect cluster-mfu '^  [0-9]+ tokens/s, MFU [0-9.]+%'
expect cluster-memory 'within --memory-gb 74.5'
expect_error nodes-alone "--nodes says how many nodes of a --cluster; give --cluster FILE too" -- \
  "$loom" plan "$config" --nodes 2
expect_error too-few-nodes "the layout needs 32 devices but 2 node(s) of DGX A100 have 16" -- \
  "$loom" plan "$config" --set parallel.dp=16 --set train.micro_batch=1 --set parallel.tp=2 \
  --cluster "$src/cluster/dgx_a100.textproto" --nodes 2
# --- the layout search (--search): the best of every layout on the cluster's devices ---
plan search 0 --search --top 3 --cluster "$src/cluster/dgx_a100.textproto" --nodes 1
expect search-header '^layout search on 1 node of DGX A100 \(8 devices, 74\.5 GiB per device\): [0-9]+ shapes'
expect search-best '^  1  dp [0-9]+ × tp [0-9]+ × pp [0-9]+ × sp [0-9]+, micro_batch [0-9]+, '
expect search-third '^  3  dp .*; [a-z_0-9]+ \+[0-9.]+ ms$'
expect search-settings '^the best, as settings: --set parallel.dp=[0-9]+ --set parallel.tp='
best=$(sed -n 's/^the best, as settings: //p' <<<"$out")
# shellcheck disable=SC2086  # the assignments are words
plan search-accepted 0 $best --memory-gb 74.5
expect_error search-alone "--search needs --cluster FILE and --nodes N" -- \
  "$loom" plan "$config" --search
expect_error search-top "--top: \"0\" is not a number of layouts from 1 to 1000" -- \
  "$loom" plan "$config" --search --top 0 --cluster "$src/cluster/dgx_a100.textproto" --nodes 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo 'name: "half"' >"$tmp/half.textproto"
expect_error bad-cluster "$tmp/half.textproto: a cluster needs name, device" -- \
  "$loom" plan "$config" --cluster "$tmp/half.textproto"
mpirun=(mpirun -np 2 --oversubscribe)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
if OMP_WAIT_POLICY=PASSIVE "${mpirun[@]}" "$loom" bench calibrate "$config" --set runtime.threads=1 \
    --set train.seq_len=64 --set train.micro_batch=2 --out "$tmp/here.textproto" >"$tmp/log" 2>&1; then
  pass
  plan calibrated 0 --set parallel.dp=2 --set train.micro_batch=8 --set runtime.threads=1 \
    --cluster "$tmp/here.textproto"
  expect calibrated-header '^step time on 1 node of this machine'
else
  fail "bench calibrate: $(cat "$tmp/log")"
fi

finish
