#!/usr/bin/env python3
"""What logging.loop_stats costs: the default config's looped model (configs/default.textproto)
trained with the statistics off and on, side by side, in alternating runs of one process. On a
logging step each iteration's entering state and the gradient reaching it are copied to the host
and summed; other steps cost nothing. Reports the mean step time over all steps and over the
logging steps alone, each as on ÷ off (the median of `--repeats` pairs).

usage: loop_stats.py LOOM_BINARY SOURCE_DIR [--steps 60] [--interval 10] [--repeats 3]
                     [--write-docs docs/benchmarks.md]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Loop statistics (logging.loop_stats)"
WARMUP = 2


def run(loom, source, name, steps, interval, on):
    run_dir = bench_common.train(
        loom, os.path.join(source, "configs/default.textproto"), name,
        [f"train.steps={steps}", "train.eval_interval=0", "checkpoint.interval=0",
         "logging.sample_tokens=0", f"logging.interval={interval}",
         f"logging.loop_stats={'true' if on else 'false'}", "runtime.threads=0",
         "data.train_shards=data/train_*.bin", "data.val_shards="])
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"loss"' in line][WARMUP:]
    logged = [r["ms_per_step"] for r in rows if r["step"] % interval == 0]
    if on and not all("loop_rms" in r for r in rows if r["step"] % interval == 0):
        raise bench_common.BenchError(f"{name}: a logging step without loop statistics")
    shutil.rmtree(run_dir)
    return statistics.mean(r["ms_per_step"] for r in rows), statistics.mean(logged)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("loom")
    parser.add_argument("source")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs")
    args = parser.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else None
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-loop-stats-")
    os.chdir(work)
    pairs = []
    try:
        bench_common.prepare_data(loom, source)
        for k in range(args.repeats):
            off = run(loom, source, f"off{k}", args.steps, args.interval, False)
            on = run(loom, source, f"on{k}", args.steps, args.interval, True)
            pairs.append((off, on))
            print(f"pair {k + 1}: off {off[0]:.1f} ms/step, on {on[0]:.1f} ms/step", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    overall = statistics.median(on[0] / off[0] for off, on in pairs)
    logged = statistics.median(on[1] / off[1] for off, on in pairs)
    off_ms = statistics.median(off[0] for off, _ in pairs)
    on_ms = statistics.median(on[0] for _, on in pairs)
    lines = [SECTION, "",
             bench_common.hardware_line(1, os.cpu_count()),
             "",
             f"The default config's model (d_model 128, 1 + 2 × 4 + 1 layers, 16 × 128 tokens per "
             f"step), {args.steps} steps, statistics every {args.interval} steps, the median of "
             f"{args.repeats} alternating pairs (the first {WARMUP} steps left out):",
             "",
             "| | off | on | on ÷ off |",
             "|---|---|---|---|",
             f"| mean ms per step | {off_ms:.1f} | {on_ms:.1f} | {overall:.3f} |",
             f"| logging steps alone | | | {logged:.3f} |",
             "",
             "A logging step copies each iteration's entering state and gradient (B·T·C floats "
             "each) to the host and sums them; the other steps do nothing more. Step times on "
             "this machine wander by several per cent from run to run, so a ratio within that "
             "says the cost is below what it can resolve.",
             "",
             f"Measured with `{bench_common.rerun_command('loop_stats.py', args.write_docs)}`.",
             ""]
    print("\n".join(lines))
    if docs:
        bench_common.replace_section(docs, SECTION, lines)


if __name__ == "__main__":
    main()
