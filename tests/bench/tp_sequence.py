#!/usr/bin/env python3
"""Sequence parallelism inside tensor parallelism (parallel.tp_sequence_parallel) against plain
tensor parallelism, which it replaces, side by side: the same model and batch at the same tp,
with the standard and the Ladder residual, once without and once with it. Prints per run the
median step time, the median exposed communication (comm_wait_ms: blocked on the tp
reduce-scatters and all-gathers, or all-reduces) and the activation peak each rank allocated,
then the ratios with ÷ without. The bytes on the wire are the same (a reduce-scatter and an
all-gather move what one all-reduce does); what changes is the activation memory between the
tensor-parallel regions and which transfers a sub-layer can hide.

With --write-docs FILE (docs/benchmarks.md) the text replaces the section "## Sequence
parallelism inside tensor parallelism" of FILE.

usage: tp_sequence.py LOOM_BINARY SOURCE_DIR [--tp 2] [--steps 8] [--write-docs FILE]
"""
import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile

import bench_common

SECTION = "## Sequence parallelism inside tensor parallelism"
WARMUP = 2
MODEL = ("model { vocab_size: 257 d_model: 256 n_heads: 8 d_mlp: 1024 max_seq_len: 256 "
         "prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 1 norm: RMSNORM "
         "position: ROTARY tie_embeddings: false }")
MODEL_TEXT = ("looped model (prelude 1, block 2 × 3 loops, coda 1), d_model 256, 8 heads, "
              "d_mlp 1024, RMSNorm, rotary")
MICRO_BATCH, SEQ_LEN = 4, 256


READING = (
    "What falls is what lives between the tensor-parallel regions: each sub-layer's input and "
    "pre-norm output with their statistics, the final norm's input, the boundary states and "
    "recomputation's checkpoints, each 1/tp of its plain-tp size; the attention and MLP "
    "intermediates were split by tp already, and the gather and partial-sum buffers are new "
    "shared temporaries. The bytes on the wire are the same as plain tp's. With the Ladder "
    "residual the reduce-scatters hide as the all-reduces did, but each region's input gather "
    "(forward) and output-gradient gather (backward) is needed by the sub-layer that starts it: "
    "only the rank's own rows are computed meanwhile, so more communication is exposed than "
    "with plain tp; step times here differ from run to run by about as much as the ratios do.")


def activation_peak(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return max(json.loads(line)["activation_peak_mib"] for line in f)


def measure(loom, tp, steps):
    """{(residual, sequence parallel): (ms per step, exposed comm ms, activation peak MiB)}."""
    results = {}
    for residual in ("STANDARD", "LADDER"):
        for tsp in (False, True):
            run_dir = f"run-{residual}-{tsp}"
            bench_common.train(loom, "bench.textproto", run_dir,
                               [f"parallel.tp={tp}", f"model.residual={residual}",
                                f"parallel.tp_sequence_parallel={str(tsp).lower()}",
                                f"train.steps={steps}",
                                f"train.global_batch={MICRO_BATCH}"], ranks=tp)
            ms, comm = bench_common.step_medians(run_dir, WARMUP)
            results[(residual, tsp)] = (ms, comm, activation_peak(run_dir))
    return results


def report_text(results, tp, steps):
    lines = [f"{MODEL_TEXT}; micro_batch {MICRO_BATCH} × seq_len {SEQ_LEN}, tp = {tp}; "
             f"{steps} steps, medians after {WARMUP} warm-up steps; ranks over shared memory. "
             f"Device: {bench_common.cpu_description()}.", "",
             "| residual | tp_sequence_parallel | ms/step | exposed comm ms | activations MiB |",
             "|---|---|---:|---:|---:|"]
    for (residual, tsp), (ms, comm, mib) in results.items():
        lines.append(f"| {residual.lower()} | {'on' if tsp else 'off'} | {ms:.1f} | {comm:.1f} "
                     f"| {mib:.2f} |")
    lines += ["", "| residual | time on ÷ off | activations on ÷ off |", "|---|---:|---:|"]
    for residual in ("STANDARD", "LADDER"):
        off, on = results[(residual, False)], results[(residual, True)]
        lines.append(f"| {residual.lower()} | {on[0] / off[0]:.3f} | {on[2] / off[2]:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--write-docs", default="", metavar="FILE")
    args = ap.parse_args()
    if args.tp < 2 or MICRO_BATCH * SEQ_LEN % args.tp:
        ap.error(f"--tp must be at least 2 and divide {MICRO_BATCH * SEQ_LEN} tokens")
    if args.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")
    source = os.path.abspath(args.source)
    command = shlex.join(["python3", os.path.relpath(os.path.abspath(sys.argv[0]), source)]
                         + [a if a not in (args.loom, args.source) else a for a in sys.argv[1:]
                            if a != args.write_docs and a != "--write-docs"])
    loom = os.path.abspath(args.loom)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-tspbench-")
    os.chdir(work)
    try:
        bench_common.prepare_data(loom, source)
        with open("bench.textproto", "w") as f:
            f.write(bench_common.bench_config(MODEL, MICRO_BATCH, SEQ_LEN))
        results = measure(loom, args.tp, args.steps)
    except bench_common.BenchError as e:
        sys.exit(f"tp_sequence: {e}")
    except KeyboardInterrupt:
        sys.exit("tp_sequence: interrupted")
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)
    report = report_text(results, args.tp, args.steps)
    print(report)
    if docs:
        bench_common.replace_section(docs, SECTION, [SECTION, "", "Measured with", "",
                                                     f"    {command}", "", report, "",
                                                     READING, ""])


if __name__ == "__main__":
    main()
