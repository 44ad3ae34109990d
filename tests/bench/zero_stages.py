#!/usr/bin/env python3
"""ZeRO stages side by side: the same model and batch at the same dp with parallel.zero_stage
0, 1 and 2, for a plain GPT and a looped model. Prints per run the median step time, the median
exposed communication, the bytes each rank sent over dp per step (metrics.jsonl's sent_mib), the
gradient memory `loom plan` gives and the memory peak the rank allocated, counted exactly on the
emulated device in a second, 2-step run of the same layout (which `loom plan`'s total must
equal); then ZeRO-2 against ZeRO-1, which it replaces.

With --write-docs FILE (docs/benchmarks.md) the text replaces the section "## ZeRO stages" of
FILE.

usage: zero_stages.py LOOM_BINARY SOURCE_DIR [--dp 2] [--steps 10] [--write-docs FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import bench_common

SECTION = "## ZeRO stages"
WARMUP = 2
MICRO_BATCH, SEQ_LEN, MICRO_BATCHES = 2, 64, 4
MODELS = {
    "plain GPT, 8 layers, untied embedding": (
        "model { vocab_size: 8192 d_model: 256 n_heads: 8 d_mlp: 1024 max_seq_len: 64 "
        "prelude_layers: 0 block_layers: 8 loops: 1 coda_layers: 0 tie_embeddings: false }"),
    "looped (prelude 1, block 2 × 4 loops, coda 1), tied": (
        "model { vocab_size: 8192 d_model: 256 n_heads: 8 d_mlp: 1024 max_seq_len: 64 "
        "prelude_layers: 1 block_layers: 2 loops: 4 coda_layers: 1 }"),
}

READING = (
    "ZeRO-1 shards the AdamW state and adds a gradient shard; ZeRO-2 also drops the whole "
    "gradient buffer. Every layer of the plain model has its gradients in one of two slots, "
    "reduce-scattered into the shard when its micro-batch's backward finishes it, so its bytes "
    "travel once per micro-batch instead of once per step (2.2 times ZeRO-1's here, at 4 "
    "micro-batches). The shared block (every iteration adds to it), the embedding and the head "
    "keep a whole window for the step and travel once; the looped model's one prelude and one "
    "coda layer fit in the slots' room, so they get whole windows too and ZeRO-2 runs as ZeRO-1 "
    "does, with the same memory and bytes. A looped model saves gradient memory with ZeRO-2 only "
    "on layers outside the block; sharding the block itself is ZeRO-3's work, not implemented "
    "yet. The reductions run on the ranks' communication progress threads behind backward. Step "
    "times of two ranks sharing these 2 cores vary from run to run by up to a half: read the "
    "time column as noise around equal, the bytes and memory columns as exact.")


def sent_dp_mib(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f][WARMUP:]
    return statistics.median(r["sent_mib"].get("dp", 0.0) for r in rows)


def planned(loom, stage):
    out = subprocess.run([loom, "plan", "bench.textproto", "--set", f"parallel.zero_stage={stage}"],
                         capture_output=True, text=True).stdout
    grads = re.search(r"^  gradients +([0-9.]+)", out, re.M)
    total = re.search(r"^  total +([0-9.]+)", out, re.M)
    if not grads or not total:
        raise bench_common.BenchError(f"loom plan printed no memory table:\n{out}")
    return float(grads.group(1)), float(total.group(1))


def device_peak(run_dir):
    with open(os.path.join(run_dir, "train.log")) as f:
        found = re.search(r"device memory: at most ([0-9.]+) MiB", f.read())
    if not found:
        raise bench_common.BenchError(f"{run_dir}: no device memory line in train.log")
    return float(found.group(1))


def measure(loom, dp, steps):
    """{(model, stage): (ms/step, exposed comm ms, dp MiB sent, planned gradient MiB, planned
    total MiB, measured peak MiB)}."""
    results = {}
    for name, model in MODELS.items():
        with open("bench.textproto", "w") as f:
            f.write(bench_common.bench_config(
                model, MICRO_BATCH, SEQ_LEN,
                f"parallel {{ dp: {dp} }}"))
        for stage in (0, 1, 2):
            run_dir = f"run-{len(results)}"
            sets = [f"parallel.zero_stage={stage}",
                    f"train.global_batch={MICRO_BATCH * MICRO_BATCHES * dp}"]
            # Time on the CPU backend; memory on the emulated device, which counts it.
            bench_common.train(loom, "bench.textproto", run_dir, sets + [f"train.steps={steps}"],
                               ranks=dp)
            bench_common.train(loom, "bench.textproto", run_dir + "-emulated",
                               sets + ["train.steps=2", "runtime.device=EMULATED"], ranks=dp)
            ms, comm = bench_common.step_medians(run_dir, WARMUP)
            results[(name, stage)] = (ms, comm, sent_dp_mib(run_dir), *planned(loom, stage),
                                      device_peak(run_dir + "-emulated"))
    return results


def report_text(results, dp, steps):
    lines = [f"d_model 256, 8 heads, d_mlp 1024, vocabulary 8192; micro_batch {MICRO_BATCH} × "
             f"seq_len {SEQ_LEN}, {MICRO_BATCHES} micro-batches per rank and step, dp = {dp}; "
             f"{steps} steps on the CPU backend, medians after {WARMUP} warm-up steps; ranks "
             f"over shared memory; peaks from 2 steps on the emulated device (its allocations "
             f"counted). Device: {bench_common.cpu_description()}.", "",
             "| model | zero_stage | ms/step | exposed comm ms | dp MiB sent/step | gradients MiB "
             "(plan) | peak MiB measured | plan total MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, stage), (ms, comm, sent, grads, total, peak) in results.items():
        lines.append(f"| {name} | {stage} | {ms:.1f} | {comm:.1f} | {sent:.2f} | {grads:.2f} | "
                     f"{peak:.1f} | {total:.2f} |")
    lines += ["", "| model | ZeRO-2 ÷ ZeRO-1: time | dp bytes | gradient memory | peak memory |",
              "|---|---:|---:|---:|---:|"]
    for name in MODELS:
        one, two = results[(name, 1)], results[(name, 2)]
        lines.append(f"| {name} | {two[0] / one[0]:.3f} | {two[2] / one[2]:.3f} | "
                     f"{two[3] / one[3]:.3f} | {two[5] / one[5]:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--write-docs", default="", metavar="FILE")
    args = ap.parse_args()
    if args.dp < 2:
        ap.error("--dp must be at least 2: ZeRO shards over the data-parallel ranks")
    if args.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")
    source = os.path.abspath(args.source)
    loom = os.path.abspath(args.loom)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    command = bench_common.rerun_command("zero_stages.py", args.write_docs)
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-zerobench-")
    os.chdir(work)
    try:
        bench_common.prepare_data(loom, source)
        results = measure(loom, args.dp, args.steps)
    except bench_common.BenchError as e:
        sys.exit(f"zero_stages: {e}")
    except KeyboardInterrupt:
        sys.exit("zero_stages: interrupted")
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)
    report = report_text(results, args.dp, args.steps)
    print(report)
    if docs:
        bench_common.replace_section(docs, SECTION, [SECTION, "", "Measured with", "",
                                                     f"    {command}", "", report, "",
                                                     READING, ""])


if __name__ == "__main__":
    main()
