#!/usr/bin/env python3
"""Sharded checkpoints against rank 0 gathering them: each rank's peak memory, the training stall
per checkpoint, and what a resume reads.

A 4-rank job (tp 2 × dp 2 with ZeRO-1) trains --steps steps of a --d-model wide model with a
checkpoint after every step, synchronously and with checkpoint.async, once with LOOM and once with
--baseline (a loom build from before sharded checkpoints, where rank 0 gathers the parameters and
both moments and writes them alone). Every rank runs under a wrapper that reports its peak
resident memory. Then the sharded run's checkpoint is resumed at its own layout and at dp 4 with
ZeRO-1 (tp 1), and each resume's rank 0 says how much it read. With --write-docs it writes its
section of docs/benchmarks.md.

usage: checkpoints.py LOOM SOURCE --baseline OLD_LOOM [--d-model 512] [--steps 6]
                      [--write-docs FILE]
"""
import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Sharded checkpoints: rank 0's memory, the stall, what a resume reads"
LAYOUT = ["parallel.tp=2", "parallel.dp=2", "parallel.zero_stage=1"]
COMMON = ["checkpoint.interval=1", "checkpoint.keep_last=2", "train.global_batch=8"]
# Runs the rank (argv[2:]) and writes its peak resident memory (KiB) to argv[1].RANK.
PEAK = ("import os, resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
        "open(sys.argv[1] + '.' + os.environ['OMPI_COMM_WORLD_RANK'], 'w').write("
        "str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def run(loom, config, run_dir, sets, resume=False):
    """(output, {rank: peak MiB}) of a 4-rank run."""
    cmd = bench_common.mpirun_command(4, exported=["OMP_WAIT_POLICY"]) + [
        sys.executable, "-c", PEAK, f"peak-{run_dir}", loom, "train", config, "--run-dir", run_dir]
    for s in sets:
        cmd += ["--set", s]
    if resume:
        cmd.append("--resume")
    out = bench_common.run_command(cmd, f"loom train ({run_dir})",
                                   env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    peaks = {r: int(open(f"peak-{run_dir}.{r}").read()) / 1024 for r in range(4)}
    return out, peaks


def stalls(run_dir):
    with open(os.path.join(run_dir, "train.log")) as f:
        ms = [float(x) for x in re.findall(r"checkpoint of step \d+: training stalled ([0-9.]+) ms",
                                           f.read())]
    return statistics.median(ms[1:-1] or ms)  # not the first (warm-up) nor the last (end of run)


def measure(loom, baseline, args):
    with open("bench.textproto", "w") as f:
        f.write(bench_common.bench_config(
            f"model {{ vocab_size: 257 d_model: {args.d_model} n_heads: 8 "
            f"d_mlp: {4 * args.d_model} max_seq_len: 64 prelude_layers: 1 block_layers: 2 loops: 2 "
            "coda_layers: 1 }", 2, 64))
    rows = []
    for name, binary in (("rank 0 gathers (before)", baseline), ("sharded", loom)):
        for background in (False, True):
            run_dir = f"{'sharded' if binary == loom else 'gathered'}-{int(background)}"
            _, peaks = run(binary, "bench.textproto", run_dir,
                           COMMON + LAYOUT + [f"train.steps={args.steps}",
                                              f"checkpoint.async={'true' if background else 'false'}"])
            ms, _ = bench_common.step_medians(run_dir, warmup=1)
            rows.append((name, background, peaks, stalls(run_dir), ms))
            print(rows[-1])
    reads = []
    for label, layout in (("same layout (tp 2 × dp 2, ZeRO-1)", LAYOUT),
                          ("dp 4, ZeRO-1", ["parallel.dp=4", "parallel.zero_stage=1"])):
        run_dir = f"resume-{len(reads)}"
        shutil.copytree("sharded-0", run_dir)
        out, _ = run(loom, "bench.textproto", run_dir,
                     COMMON + layout + [f"train.steps={args.steps + 1}"], resume=True)
        read, stored = re.search(r"read ([0-9.]+) MiB of the checkpoint's ([0-9.]+) MiB", out).groups()
        reads.append((label, float(read), float(stored)))
        print(reads[-1])
    return rows, reads


def write_docs(docs, rows, reads, args, command):
    size = 0
    lines = [SECTION, "",
             f"`{command}` ({bench_common.cpu_description()}): 4 ranks, tp 2 × dp 2 with ZeRO-1, "
             f"d_model {args.d_model}, a checkpoint after each of {args.steps} steps. Peak "
             "resident memory of each rank (MiB; the model, its arena and the checkpoint), the "
             "median training stall per checkpoint (rank 0's `train.log`) and the median step. "
             "OLD_LOOM: `build/loom` of commit 169ceaf, the last where rank 0 gathered and wrote "
             "the whole checkpoint.",
             "", "| writer | async | rank 0 peak | other ranks' peak | stall | step |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, background, peaks, stall, ms in rows:
        others = max(v for r, v in peaks.items() if r != 0)
        lines.append(f"| {name} | {'yes' if background else 'no'} | {peaks[0]:.0f} | {others:.0f} "
                     f"| {stall:.0f} ms | {ms:.0f} ms |")
    lines += ["", "Resuming the sharded checkpoint, rank 0 reads (the resume line of `train.log`):",
              "", "| resumed at | rank 0 read | checkpoint's pieces |", "| --- | ---: | ---: |"]
    for label, read, stored in reads:
        lines.append(f"| {label} | {read:.1f} MiB | {stored:.1f} MiB |")
    lines += ["", "Before, rank 0 held the gathered parameters and both whole moments besides its own "
              "state while it wrote, and the other ranks waited; now each rank writes its own "
              "pieces and rank 0's peak is the others'. A resume at the writing layout reads a "
              "rank's own share (rounded out to 256 KiB checksum blocks); at another layout, the "
              "blocks of the pieces that overlap it. Four ranks share two cores here, with each "
              "checkpoint's fsync, so the stall and step columns move by up to ±30 % between "
              "runs; the memory columns repeat.", ""]
    bench_common.write_section(docs, SECTION, lines, {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--baseline", required=True, help="a loom binary from before sharded checkpoints")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    loom, baseline = os.path.abspath(args.loom), os.path.abspath(args.baseline)
    source = os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-ckptbench-")
    os.chdir(work)
    try:
        bench_common.prepare_data(loom, source)
        rows, reads = measure(loom, baseline, args)
        if docs:
            kept = [a for a in sys.argv[3:] if a not in (args.write_docs, "--write-docs", args.baseline)]
            kept = [a if a != "--baseline" else "--baseline OLD_LOOM" for a in kept]
            write_docs(docs, rows, reads, args, " ".join(["python3 tests/bench/checkpoints.py build/loom ."] + kept))
    except bench_common.BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
