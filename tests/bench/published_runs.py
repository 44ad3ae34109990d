#!/usr/bin/env python3
"""The step-time model (`loom plan --cluster`, core/time_model.h) against published large-scale
runs (Megatron-LM, llm.c and the zero-bubble paper's, each row naming its source): each run
modelled as loom would run it — the same
shapes on loom's GPT, bf16, the same tp, pp, dp, schedule, micro-batch and recomputation — on
the cluster file of its hardware, predicted step time beside the published one. The A100 file's
matmul efficiency was calibrated on the first row alone; the others test it. Where loom lacks
what the run used, its nearest equivalent is taken and the row says so.

With --write-docs FILE (docs/benchmarks.md) the table replaces the section "## Step-time model
against published runs" of FILE.

usage: published_runs.py LOOM_BINARY SOURCE_DIR [--write-docs FILE]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

SECTION = "## Step-time model against published runs"


def gpt(layers, d, heads, vocab, seq, tied=True, mlp=None):
    return (f"model {{ vocab_size: {vocab} d_model: {d} n_heads: {heads} d_mlp: {mlp or 4 * d} "
            f"max_seq_len: {seq} prelude_layers: 0 block_layers: {layers} loops: 1 "
            f"coda_layers: 0 tie_embeddings: {'true' if tied else 'false'} }}")


def run_config(model, seq, global_batch, micro_batch, parallel, recompute="NONE"):
    return (f"{model}\ntrain {{ global_batch: {global_batch} micro_batch: {micro_batch} "
            f"seq_len: {seq} recompute: {recompute} }}\nparallel {{ {parallel} }}\n"
            "runtime { precision: BF16 }\n")


# (name, config, cluster, nodes, published seconds per step, source and what differs)
ROWS = [
    ("22B, tp 8, full recompute", run_config(gpt(48, 6144, 64, 51200, 2048), 2048, 4, 4,
                                             "tp: 8", "LOOP_BOUNDARY"),
     "dgx_a100", 1, 1.42,
     "Korthikanti et al. 2022 Table 5 (calibration row); full recomputation as loom's "
     "LOOP_BOUNDARY (every layer's forward again)"),
    ("175B, tp 8 × pp 8, interleaved v 3, full recompute",
     run_config(gpt(96, 12288, 96, 51200, 2048), 2048, 64, 1,
                "tp: 8 pp: 8 pipeline_schedule: INTERLEAVED_1F1B virtual_stages: 3",
                "LOOP_BOUNDARY"),
     "dgx_a100", 8, 18.13, "Korthikanti et al. 2022 Table 5"),
    ("530B, tp 8 × pp 35, interleaved v 3, full recompute",
     run_config(gpt(105, 20480, 128, 51200, 2048), 2048, 280, 1,
                "tp: 8 pp: 35 pipeline_schedule: INTERLEAVED_1F1B virtual_stages: 3",
                "LOOP_BOUNDARY"),
     "dgx_a100", 35, 49.05, "Korthikanti et al. 2022 Table 5"),
    ("1T, tp 8 × pp 64, interleaved, full recompute",
     run_config(gpt(128, 25600, 160, 51200, 2048), 2048, 512, 1,
                "tp: 8 pp: 64 pipeline_schedule: INTERLEAVED_1F1B virtual_stages: 2",
                "LOOP_BOUNDARY"),
     "dgx_a100", 64, 94.42,
     "Korthikanti et al. 2022 Table 5; 128 layers do not fill 64 × 3 chunks, so v 2 here"),
    ("GPT-2 124M, dp 8, ZeRO-1", run_config(gpt(12, 768, 12, 50304, 1024), 1024, 512, 64,
                                             "dp: 8 zero_stage: 1"),
     "dgx_a100", 1, 0.300,
     "llm.c scripts/run_gpt2_124M.sh (~300 ms); llm.c runs cuDNN flash attention and fused "
     "kernels"),
    ("GPT-2 350M, dp 8, ZeRO-1", run_config(gpt(24, 1024, 16, 50304, 1024), 1024, 512, 64,
                                             "dp: 8 zero_stage: 1"),
     "dgx_a100", 1, 0.820, "llm.c scripts/run_gpt2_350M.sh (~820 ms)"),
    ("GPT-2 774M, dp 8, ZeRO-1", run_config(gpt(36, 1280, 20, 50304, 1024), 1024, 512, 32,
                                             "dp: 8 zero_stage: 1"),
     "dgx_a100", 1, 1.7, "llm.c scripts/run_gpt2_774M.sh (~1.7 s)"),
    ("28.3B, pp 32, 1F1B, m 96", run_config(gpt(62, 6144, 48, 51200, 1024), 1024, 96, 1,
                                            "pp: 32 pipeline_schedule: ONE_F_ONE_B"),
     "dgx_a100", 4, 96 / (0.76 * 32),
     "Qi et al. 2024 Table 4 (0.76 samples/GPU/s); RoCE, not HDR InfiniBand, between its "
     "nodes; vocabulary not given (51200 taken)"),
]


def predicted_seconds(loom, source, config_text, cluster, nodes):
    with open("row.textproto", "w") as f:
        f.write(config_text)
    out = subprocess.run([loom, "plan", "row.textproto", "--cluster",
                          os.path.join(source, "cluster", cluster + ".textproto"),
                          "--nodes", str(nodes)], capture_output=True, text=True)
    found = re.search(r"^  step +([0-9.]+) ms", out.stdout, re.M)
    if not found:
        sys.exit(f"published_runs: loom plan gave no step time for {cluster}:\n"
                 f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    critical = re.search(r"critical: (\w+)", out.stdout).group(1)
    return float(found.group(1)) / 1000.0, critical


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--write-docs", default="", metavar="FILE")
    args = ap.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    work = tempfile.mkdtemp(prefix="loom-published-")
    os.chdir(work)
    lines = ["| run | cluster × nodes | predicted s/step | published s/step | ratio | "
             "critical part | source, and what differs |", "|---|---|---:|---:|---:|---|---|"]
    try:
        for name, text, cluster, nodes, published, note in ROWS:
            predicted, critical = predicted_seconds(loom, source, text, cluster, nodes)
            lines.append(f"| {name} | {cluster} × {nodes} | {predicted:.3f} | {published:.3f} | "
                         f"{predicted / published:.2f} | {critical} | {note} |")
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_common
        bench_common.replace_section(os.path.abspath(args.write_docs), SECTION, [
            SECTION, "", "Measured with", "",
            "    python3 tests/bench/published_runs.py build/loom . --write-docs docs/benchmarks.md",
            "", table, "", READING, ""])


READING = (
    "The first row calibrated `gemm_efficiency` in cluster/dgx_a100.textproto (0.555); the "
    "others are predictions from it. The model is loom's: loom's kernels and schedules as they "
    "would run these shapes, against runs of Megatron-LM, llm.c and the zero-bubble fork, which "
    "fuse kernels loom runs separately (bias with GeLU, softmax with masking, flash attention in "
    "llm.c) and overlap what loom does not; where a run used something loom lacks (selective "
    "recomputation, sequence parallelism with it, ZB-2p), the row takes loom's nearest "
    "equivalent and its published figure for that equivalent.")

if __name__ == "__main__":
    main()
