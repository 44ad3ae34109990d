#!/usr/bin/env python3
"""The step-time model (`loom plan --cluster`, core/time_model.h) against steps measured here:
`loom bench calibrate` measures this machine (GEMM peak, the kernels' memory bandwidth, the
all-reduce between ranks) and fits the matmul efficiency on one process's step of the model
below with recompute NONE and one micro-batch; then each layout of the set below — none of them
the calibration's — trains for a few steps, and its median step time is printed beside the
prediction. Two ranks at most, one thread each: on this 2-core machine more would share cores,
which the model does not describe.

With --slow-link RATE (e.g. 1gbit; needs root) the calibration and every layout run with the
ranks talking over TCP through a loopback limited to RATE in a network namespace (tc tbf, as
tests/bench/tp_ladder.py does): the calibration then measures that link, and the predictions
cross it.

With --write-docs FILE (docs/benchmarks.md) the table replaces this link condition's part of
the section "## Step-time model against measured steps" of FILE.

usage: time_model_cpu.py LOOM_BINARY SOURCE_DIR [--steps 6] [--slow-link RATE] [--write-docs FILE]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import bench_common

SECTION = "## Step-time model against measured steps"
WARMUP = 2
MODEL = ("model { vocab_size: 257 d_model: 256 n_heads: 8 d_mlp: 1024 max_seq_len: 256 "
         "prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 1 norm: RMSNORM "
         "position: ROTARY tie_embeddings: false }")
MODEL_TEXT = ("looped model (prelude 1, block 2 × 3 loops, coda 1), d_model 256, 8 heads, "
              "d_mlp 1024, RMSNorm, rotary; micro_batch 4 × seq_len 256, global batch 8")
LADDER = "model.residual=LADDER"
LAYOUTS = [
    ("1 rank, recompute SQRT", 1, ["train.recompute=SQRT"]),
    ("1 rank, recompute LOOP_BOUNDARY", 1, ["train.recompute=LOOP_BOUNDARY"]),
    ("1 rank, micro_batch 2", 1, ["train.micro_batch=2"]),
    ("dp 2", 2, ["parallel.dp=2"]),
    ("dp 2, ZeRO-1", 2, ["parallel.dp=2", "parallel.zero_stage=1"]),
    ("tp 2, standard", 2, ["parallel.tp=2"]),
    ("tp 2, Ladder", 2, ["parallel.tp=2", LADDER]),
    ("tp 2, Ladder, tp_sequence_parallel", 2,
     ["parallel.tp=2", LADDER, "parallel.tp_sequence_parallel=true"]),
    ("pp 2, 1F1B", 2, ["parallel.pp=2"]),
    ("pp 2, GPipe", 2, ["parallel.pp=2", "parallel.pipeline_schedule=GPIPE"]),
    ("pp 2, ZB-H1", 2, ["parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_H1"]),
    ("sp 2, ring", 2, ["parallel.sp=2"]),
    ("sp 2, Ulysses", 2, ["parallel.sp=2", "parallel.sequence_method=ULYSSES"]),
]


READING = (
    "Every prediction scales with the calibration: one process's step, timed once. On this "
    "shared machine step times wander by up to about 20 % from run to run (three runs of this "
    "script gave worst differences of 8 %, 32 % and 21 %), so a run's worst difference says as "
    "much about the machine as about the model; the layouts' order and the parts (compute "
    "first everywhere at this size) hold from run to run.")


def predicted(loom, overrides):
    cmd = [loom, "plan", "bench.textproto", "--cluster", "here.textproto", "--nodes", "1"]
    for o in overrides:
        cmd += ["--set", o]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    found = re.search(r"^  step +([0-9.]+) ms", out, re.M)
    if not found:
        raise bench_common.BenchError(f"loom plan gave no step time for {overrides}:\n{out}")
    return float(found.group(1)), re.search(r"critical: (\w+)", out).group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--slow-link", default="", help="rate of the emulated link, e.g. 1gbit")
    ap.add_argument("--write-docs", default="", metavar="FILE")
    args = ap.parse_args()
    if args.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-timemodel-")
    os.chdir(work)
    rows = []
    try:
        with bench_common.slow_link(args.slow_link) as link:
            bench_common.prepare_data(loom, source)
            with open("bench.textproto", "w") as f:
                f.write(bench_common.bench_config(MODEL, 4, 256, "").replace(
                    "train { micro_batch: 4", "train { global_batch: 8 micro_batch: 4"))
            calibration = bench_common.run_command(
                link.prefix + bench_common.mpirun_command(2, link)
                + [loom, "bench", "calibrate", "bench.textproto", "--out", "here.textproto"],
                "loom bench calibrate", env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
            for name, ranks, overrides in LAYOUTS:
                if args.slow_link and ranks == 1:
                    continue  # nothing crosses the link
                run_dir = bench_common.train(loom, "bench.textproto", f"run{len(rows)}",
                                             overrides + [f"train.steps={args.steps}"],
                                             ranks=ranks, link=link)
                measured = bench_common.step_medians(run_dir, WARMUP)[0]
                rows.append((name, *predicted(loom, overrides), measured))
    except bench_common.BenchError as e:
        sys.exit(f"time_model_cpu: {e}")
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)
    worst = max(abs(p / m - 1) for _, p, _, m in rows)
    condition = link.description or "ranks over shared memory"
    lines = [f"### {condition}", "",
             f"{MODEL_TEXT}; one thread per rank; {args.steps} steps, medians after {WARMUP} "
             f"warm-up steps. Device: {bench_common.cpu_description()}.", "",
             "Calibration (`mpirun -np 2 loom bench calibrate`): "
             + calibration.strip().splitlines()[-1], "",
             "| layout | predicted ms/step | measured ms/step | predicted ÷ measured | "
             "critical part |", "|---|---:|---:|---:|---|"]
    for name, p, critical, m in rows:
        lines.append(f"| {name} | {p:.1f} | {m:.1f} | {p / m:.2f} | {critical} |")
    lines += ["", f"Worst difference: {100 * worst:.0f} % "
              f"({'within' if worst <= 0.25 else 'outside'} ±25 %).", "", READING]
    print("\n".join(lines))
    if args.write_docs:
        command = " ".join(["python3 tests/bench/time_model_cpu.py build/loom .",
                            f"--steps {args.steps}"]
                           + ([f"--slow-link {args.slow_link}"] if args.slow_link else []))
        write_condition(os.path.abspath(args.write_docs), condition,
                        lines + ["", "Measured with", "", f"    {command}", ""])


def write_condition(docs, condition, lines):
    """Replaces the subsection "### condition" of SECTION in docs (keeping the others), or adds
    it; adds the section when missing."""
    text = open(docs).read() if os.path.exists(docs) else "# Benchmarks\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n"
    before, rest = text.split(SECTION, 1)
    end = rest.find("\n## ")
    body, after = (rest, "") if end < 0 else (rest[:end], rest[end:])
    parts = re.split(r"(?m)^(?=### )", body)
    head, subsections = parts[0], [p for p in parts[1:] if not p.startswith(f"### {condition}\n")]
    subsections.append("\n".join(lines) + "\n")
    ordered = sorted(subsections, key=lambda p: "TCP" in p)  # shared memory first
    text = (before + SECTION + head.rstrip("\n") + "\n\n"
            + "\n\n".join(p.strip("\n") for p in ordered) + "\n" + after)
    with open(docs, "w") as f:
        f.write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
