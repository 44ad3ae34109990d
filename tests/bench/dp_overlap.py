#!/usr/bin/env python3
"""Data-parallel overlap benchmark: step time and exposed communication time (the time a rank
blocks waiting for gradient reductions, parameter all-gathers and the loss all-reduce) with the
bucketed reduction overlapped with backward, and with it started only after backward, at each
dp. Weak scaling: every rank runs the same micro-batch, so the single-process step is the
compute-only baseline. Prints a markdown table of medians over the timed steps.

With --slow-link RATE (e.g. 1gbit; needs root) the ranks talk over TCP through a loopback
limited to RATE inside a network namespace the benchmark creates and removes (tc tbf), so that
communication is a large share of the step, as between machines.

usage: dp_overlap.py LOOM_BINARY SOURCE_DIR [--dp 2,4] [--steps 12] [--zero]
                     [--set key=value ...] [--slow-link RATE]
"""
import argparse
import os
import shutil
import sys
import tempfile

import bench_common

MODELS = {
    # plain: 8 unique layers (the default prelude and coda layer around a block of 6); looped: 6
    # layers applied per step from 4 unique ones (its 2-layer block runs twice), so its block's
    # gradients are final only near the end of backward.
    "plain": "model { vocab_size: 257 d_model: 384 n_heads: 6 d_mlp: 1536 max_seq_len: 64 "
             "block_layers: 6 loops: 1 tie_embeddings: false }",
    "looped": "model { vocab_size: 257 d_model: 384 n_heads: 6 d_mlp: 1536 max_seq_len: 64 "
              "prelude_layers: 1 block_layers: 2 loops: 2 coda_layers: 1 tie_embeddings: false }",
}
LAYERS_APPLIED = {"plain": 8, "looped": 6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--model", choices=sorted(MODELS), default="plain")
    ap.add_argument("--dp", default="2,4")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--zero", action="store_true", help="ZeRO-1 (parallel.zero_stage=1)")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    ap.add_argument("--slow-link", default="", help="rate of the emulated link, e.g. 1gbit")
    args = ap.parse_args()
    loom = os.path.abspath(args.loom)
    args.source = os.path.abspath(args.source)
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-dpbench-")
    os.chdir(work)
    try:
        with bench_common.slow_link(args.slow_link) as link:
            bench_common.prepare_data(loom, args.source)
            with open("bench.textproto", "w") as f:
                f.write(bench_common.bench_config(MODELS[args.model], 1, 64, "parallel { bucket_mb: 4 }"))

            def run(dp, overlap):
                sets = [f"train.global_batch={dp}", f"train.steps={args.steps}",
                        f"parallel.dp={dp}",
                        f"parallel.overlap_grad_reduce={str(overlap).lower()}",
                        f"parallel.zero_stage={1 if args.zero else 0}"] + args.set
                run_dir = bench_common.train(loom, "bench.textproto", f"run-dp{dp}-{overlap}",
                                             sets, ranks=dp, link=link)
                return bench_common.step_medians(run_dir, warmup=2)

            base_ms, _ = run(1, True)
            print(f"model: {args.model}, {LAYERS_APPLIED[args.model]} layers applied per step "
                  f"(d_model 384, 6 heads, d_mlp 1536), {args.steps} steps (medians after 2 warm-up steps), micro-batch "
                  f"1 × 64 tokens per rank, 1 thread per rank{', ZeRO-1' if args.zero else ''}"
                  f"{', ' + link.description if link.description else ''}")
            print(f"single process: {base_ms:.1f} ms/step\n")
            print("| dp | overlap | ms/step | exposed comm ms | step / single | exposed share |")
            print("|---|---|---|---|---|---|")
            for dp in [int(x) for x in args.dp.split(",")]:
                results = {}
                for overlap in (False, True):
                    ms, comm = run(dp, overlap)
                    results[overlap] = (ms, comm)
                    print(f"| {dp} | {'on' if overlap else 'off'} | {ms:.1f} | {comm:.1f} | "
                          f"{ms / base_ms:.2f} | {comm / ms:.0%} |")
                (off_ms, off_comm), (on_ms, on_comm) = results[False], results[True]
                print(f"| {dp} | on vs off | {off_ms / on_ms:.2f}× faster | "
                      f"{on_comm / off_comm if off_comm else 0:.2f}× the exposed time | | |")
    except bench_common.BenchError as e:
        sys.exit(f"dp_overlap: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
