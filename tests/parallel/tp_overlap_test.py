#!/usr/bin/env python3
"""Ladder Residual overlaps tensor-parallel communication with computation, measured: the same
small GPT trains a few steps at tp = 2 with the standard and with the ladder residual, each with
and without a per-operation latency on the tp group
(LOOM_FAULT=rank=*,group=tp,op=*,action=delay,seconds=S: every tp operation is posted S seconds
after it was issued). The standard residual waits for each all-reduce before the next sub-layer,
so every operation's S adds to its step; the ladder residual computes the next sub-layer while
the all-reduce is in flight, so most of it hides. Passes when the ladder step grows by less than
--max-ratio (0.6) times the standard step's growth. Step times are medians over the steps after
the first. Timings on a shared machine are noisy (another process can slow one of the four runs),
so the measurement is repeated up to --attempts (3) times and passes if one attempt does: a ladder
that does not overlap fails every attempt.

S defaults to the time of one sub-layer's forward on this machine (measured from the standard
run without latency: its compute time / (3 · 2 · layers), forward + backward ≈ 3 forwards), so
that one sub-layer's compute can just hide one operation's latency.

usage: tp_overlap_test.py LOOM_BINARY SOURCE_DIR [--tp 2] [--dp 1] [--delay auto|SECONDS]
                          [--steps 6] [--max-ratio 0.6] [--fault-group tp] [--attempts 3]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import bench_common  # noqa: E402  (tests/bench/bench_common.py)

LAYERS = 4
MICRO_BATCH = 4
CONFIG = bench_common.bench_config(
    f"model {{ vocab_size: 257 d_model: 512 n_heads: 8 d_mlp: 2048 max_seq_len: 128 "
    f"prelude_layers: 0 block_layers: {LAYERS} loops: 1 coda_layers: 0 tie_embeddings: false "
    f"lm_head_chunk: 512 }}", MICRO_BATCH, 128)
# Operations on the tp group per step that the standard residual exposes at least: one
# all-reduce after each attention and MLP sub-layer in forward and one for each in backward.
MIN_TP_OPERATIONS = 4 * LAYERS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dp", type=int, default=1, help="data-parallel ranks (ranks = tp · dp)")
    ap.add_argument("--delay", default="auto", help="seconds per tp operation, or auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-ratio", type=float, default=0.6,
                    help="the ladder step's growth must be below this times the standard's")
    ap.add_argument("--fault-group", default="tp",
                    help="the group whose operations are delayed (tp; others only to check the "
                         "test itself)")
    ap.add_argument("--attempts", type=int, default=3,
                    help="measure up to this many times; pass when one attempt passes")
    args = ap.parse_args()
    if args.steps < 3:
        ap.error("--steps must be at least 3 (the first step is not timed)")
    if args.delay != "auto":
        try:
            if float(args.delay) <= 0:
                raise ValueError
        except ValueError:
            ap.error(f"--delay {args.delay}: expected auto or a positive number of seconds")
    loom = os.path.abspath(args.loom)
    source = os.path.abspath(args.source)
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-tp-overlap-")
    os.chdir(work)
    started = time.monotonic()
    try:
        bench_common.prepare_data(loom, source, inputs=("core",))  # once: attempts share it
        with open("overlap.textproto", "w") as f:
            f.write(CONFIG)
        for attempt in range(1, args.attempts + 1):
            if run(loom, args, started, attempt) == 0:
                return 0
            if attempt < args.attempts:
                print(f"attempt {attempt} of {args.attempts} failed; measuring again")
        return 1
    except bench_common.BenchError as e:
        print(f"FAIL: {e}")
        return 1
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)


def run(loom, args, started, attempt):
    """One measurement (four runs, in their own run directories); 0 when the ladder hides it."""
    def train(residual, delay):
        env = {}
        if delay:
            env["LOOM_FAULT"] = (f"rank=*,group={args.fault_group},op=*,action=delay,"
                                 f"seconds={delay:.6f}")
        sets = [f"train.steps={args.steps}", f"train.global_batch={MICRO_BATCH * args.dp}",
                f"parallel.tp={args.tp}", f"parallel.dp={args.dp}", f"model.residual={residual}"]
        run_dir = f"run{attempt}-{residual}-{'delayed' if delay else 'plain'}"
        bench_common.train(loom, "overlap.textproto", run_dir, sets, ranks=args.tp * args.dp,
                           env=env, timeout=300)
        return bench_common.step_medians(run_dir, warmup=1)

    medians = {("STANDARD", False): train("STANDARD", 0)}
    ms, comm = medians[("STANDARD", False)]
    if args.delay == "auto":
        delay = min(max((ms - comm) / (3 * 2 * LAYERS) / 1000, 0.005), 0.05)
        how = "one sub-layer's forward here"
    else:
        delay = float(args.delay)
        how = "--delay"
    print(f"tp = {args.tp}, dp = {args.dp}: latency {delay * 1000:.1f} ms per operation on group "
          f"{args.fault_group} ({how}); medians over steps 2–{args.steps}")
    medians[("LADDER", False)] = train("LADDER", 0)
    medians[("STANDARD", True)] = train("STANDARD", delay)
    medians[("LADDER", True)] = train("LADDER", delay)

    print("| residual | latency | ms/step | exposed comm ms |")
    print("| --- | --- | ---: | ---: |")
    for (residual, delayed), (ms, comm) in medians.items():
        print(f"| {residual.lower()} | {'yes' if delayed else 'no'} | {ms:.1f} | {comm:.1f} |")
    growth = {r: medians[(r, True)][0] - medians[(r, False)][0] for r in ("STANDARD", "LADDER")}
    print(f"step growth with the latency: standard {growth['STANDARD']:.1f} ms, ladder "
          f"{growth['LADDER']:.1f} ms (limit {args.max_ratio} × standard = "
          f"{args.max_ratio * growth['STANDARD']:.1f} ms); {time.monotonic() - started:.0f} s")

    expected = MIN_TP_OPERATIONS * delay * 1000
    if growth["STANDARD"] < 0.5 * expected:
        print(f"FAIL: the latency added only {growth['STANDARD']:.1f} ms to the standard step, "
              f"less than half of {MIN_TP_OPERATIONS} operations × {delay * 1000:.1f} ms: is the "
              f"tensor-parallel communication on group {args.fault_group} going through the MPI "
              "runtime (where LOOM_FAULT applies)?")
        return 1
    if growth["LADDER"] >= args.max_ratio * growth["STANDARD"]:
        print(f"FAIL: the ladder step grew by {growth['LADDER']:.1f} ms, not less than "
              f"{args.max_ratio} × the standard step's {growth['STANDARD']:.1f} ms: the ladder "
              "residual does not hide the tensor-parallel communication")
        return 1
    print(f"PASS: the ladder step grew by {growth['LADDER'] / growth['STANDARD']:.2f}× the "
          "standard step's growth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
