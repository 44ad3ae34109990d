#!/usr/bin/env python3
"""runtime.precision BF16 against FP32 on the CPU, side by side:

1. activation arena BF16 ÷ FP32 and step time ratio, measured by `loom bench step` on the
   default shape and the GPT-2-small shape (configs/bench_gpt2_small.textproto), the median of
   `--repeats` alternating runs;
2. the MiB each group sent per step (metrics.jsonl `sent_mib`, rank 0) in a dp 2 × pp 2 × sp 2 ×
   tp 2 run of a small looped model (16 ranks on this machine's cores: slow, but only the bytes
   are read), in FP32, BF16, and BF16 with parallel.grad_reduce_dtype BF16;
3. the loss curve of the default config (configs/default.textproto, the byte-level `./run.sh`
   data, 300 steps, validation every 25) in both precisions, drawn on one chart; the final
   validation losses compared.

usage: precision.py LOOM_BINARY SOURCE_DIR [--steps 300] [--gpt2-steps 3] [--repeats 3]
                    [--write-docs docs/benchmarks.md]
"""
import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## bf16 against fp32 (runtime.precision)"
SMALL = ("model { vocab_size: 257 d_model: 64 n_heads: 4 d_mlp: 256 max_seq_len: 64 "
         "prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 1 input_injection: true }")


def bench_step(loom, config, precision, steps, extra=()):
    cmd = [loom, "bench", "step", config, "--json", "--steps", str(steps), "--warmup", "1",
           "--set", f"runtime.precision={precision}", *extra]
    out = bench_common.run_command(cmd, f"loom bench step ({precision})")
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def shapes(loom, source, gpt2_steps, repeats):
    """Per shape, the FP32 and BF16 `bench step` results, run `repeats` times in alternation
    (this machine's step time wanders by several per cent): the median run's ms_per_step."""
    rows = []
    for name, config, steps in (
            ("default (d 128, 4 × 2 loops, 16 × 128 tokens)",
             os.path.join(source, "configs/default.textproto"), 10),
            ("GPT-2 small (d 768, 12 layers, 4 × 256 tokens)",
             os.path.join(source, "configs/bench_gpt2_small.textproto"), gpt2_steps)):
        runs = {"FP32": [], "BF16": []}
        for _ in range(repeats):
            for p in runs:
                runs[p].append(bench_step(loom, config, p, steps))
        median = lambda rs: sorted(rs, key=lambda r: r["ms_per_step"])[len(rs) // 2]  # noqa: E731
        rows.append((name, median(runs["FP32"]), median(runs["BF16"])))
    return rows


def traffic(loom):
    with open("small.textproto", "w") as f:
        f.write(bench_common.bench_config(SMALL, micro_batch=2, seq_len=64))
    sent = {}
    for name, overrides in (("FP32", ["runtime.precision=FP32"]),
                            ("BF16", ["runtime.precision=BF16"]),
                            ("BF16 + bf16 gradients", ["runtime.precision=BF16",
                                                        "parallel.grad_reduce_dtype=BF16"])):
        run_dir = bench_common.train(
            loom, "small.textproto", "traffic-" + name.split()[0] + str(len(overrides)),
            ["parallel.dp=2", "parallel.pp=2", "parallel.sp=2", "parallel.tp=2",
             "train.global_batch=8", "train.steps=3"] + overrides,
            ranks=16, timeout=600)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            sent[name] = [json.loads(line) for line in f][-1]["sent_mib"]
    return sent


def curves(loom, source, steps):
    inputs = [a for d in sorted(glob.glob("/usr/lib/python3.[0-9]*")) for a in ("--input", d)]
    bench_common.run_command([loom, "prepare", *inputs, "--ext", ".py", "--output", "pystdlib",
                              "--val-fraction", "0.05"], "loom prepare")
    out = {}
    for precision in ("FP32", "BF16"):
        run_dir = bench_common.train(
            loom, os.path.join(source, "configs/default.textproto"), f"curve-{precision}",
            [f"runtime.precision={precision}", f"train.steps={steps}", "train.eval_interval=25",
             "runtime.threads=0", "logging.sample_tokens=0", "checkpoint.interval=0",
             "data.train_shards=pystdlib/train_*.bin", "data.val_shards=pystdlib/val_*.bin"])
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            out[precision] = [json.loads(line) for line in f]
    return out


def chart_svg(runs):
    """Training loss (thin) and validation loss (dots, thick) against step, FP32 and BF16."""
    w, h, left, right, top, bottom = 620, 340, 55, 110, 30, 40
    colours = {"FP32": "#1f77b4", "BF16": "#d62728"}
    steps = max(m["step"] for rows in runs.values() for m in rows)
    losses = [m["loss"] for rows in runs.values() for m in rows[5:]]
    lo, hi = min(losses) * 0.97, max(losses) * 1.02
    X = lambda s: left + (w - left - right) * s / steps  # noqa: E731
    Y = lambda v: h - bottom - (h - top - bottom) * (min(max(v, lo), hi) - lo) / (hi - lo)  # noqa: E731
    p = [bench_common.axis_label("y", "loss (nats per token)", 14, (top + h - bottom) / 2,
                                 rotated=True)]
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        p.append(f'<line x1="{left}" x2="{w - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        p.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for s in range(0, steps + 1, max(50, steps // 6 // 50 * 50)):
        p.append(f'<text x="{X(s):.1f}" y="{h - bottom + 16}" text-anchor="middle">{s}</text>')
    p.append(bench_common.axis_label("x", "training step", (left + w - right) / 2, h - 8))
    for i, (precision, rows) in enumerate(runs.items()):
        c = colours[precision]
        path = " ".join(f"{X(m['step']):.1f},{Y(m['loss']):.1f}" for m in rows)
        p.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1" '
                 'stroke-opacity="0.6"/>')
        val = [(m["step"], m["val_loss"]) for m in rows if "val_loss" in m]
        path = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in val)
        p.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2.5"/>')
        for s, v in val:
            p.append(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>')
        p.append(f'<text x="{w - right + 8}" y="{top + 18 * i + 10}" fill="{c}">{precision}</text>')
    p.append(f'<text x="{w - right + 8}" y="{top + 50}">thin: training</text>')
    p.append(f'<text x="{w - right + 8}" y="{top + 64}">thick, dots:</text>')
    p.append(f'<text x="{w - right + 8}" y="{top + 78}">validation</text>')
    # curves() trains one process with runtime.threads 0: a thread per core.
    return bench_common.chart_svg(
        w, h, p, "Loss against step, FP32 and BF16 (runtime.precision)",
        bench_common.hardware_line(1, os.cpu_count()),
        f"configs/default.textproto, {steps} steps on byte-level Python source (the standard "
        "library's .py files), validation every 25 steps", font_size=11)


def report(rows, sent, runs, command):
    lines = [SECTION, "",
             f"Command: `{command}` on {bench_common.cpu_description()}. On the CPU bf16 is storage",
             "only (kernels/cpu/backend_bf16.cpp converts each operand to fp32, runs the fp32 kernel",
             "and rounds once; Debian's OpenBLAS has no bf16 GEMM, although this CPU has",
             "AVX512-BF16): what it buys here is memory and message size, not speed.", "",
             "| shape | activations FP32 (MiB) | BF16 (MiB) | BF16 ÷ FP32 | ms/step FP32 | BF16 | "
             "step time BF16 ÷ FP32 |", "|---|---|---|---|---|---|---|"]
    for name, f, b in rows:
        lines.append(f"| {name} | {f['activation_mib']:.2f} | {b['activation_mib']:.2f} | "
                     f"{b['activation_mib'] / f['activation_mib']:.3f} | {f['ms_per_step']:.0f} | "
                     f"{b['ms_per_step']:.0f} | {b['ms_per_step'] / f['ms_per_step']:.2f} |")
    lines += ["", "Step times are the median of `--repeats` alternating runs. On the CPU bf16 costs",
              "time: every kernel converts its operands to fp32 and its outputs back, which weighs",
              "most where the matrices are small (the default shape); at GPT-2 small the GEMMs",
              "dominate and the cost is a few per cent.", "",
              "The arena is not exactly half: the norms' statistics, attention's LSE and the",
              "rotary tables stay fp32, and the kernels' scratch is sized in bytes of fp32 work.",
              "BF16 also keeps a bf16 copy of the weights (2 bytes per parameter) beside the",
              "fp32 master weights, gradients and AdamW state, which do not change.", "",
              "MiB rank 0 sent per step over each of its groups (`sent_mib`), dp 2 × pp 2 × sp 2 ×",
              "tp 2, looped model d 64, 8 sequences of 64 tokens per step:", "",
              "| group | FP32 | BF16 | BF16 ÷ FP32 | BF16 + `grad_reduce_dtype: BF16` | ÷ FP32 |",
              "|---|---|---|---|---|---|"]
    for group in sent["FP32"]:
        f, b, g = sent["FP32"][group], sent["BF16"][group], sent["BF16 + bf16 gradients"][group]
        if f > 0:  # world carries only a few scalars after the step, outside the count
            lines.append(f"| {group} | {f:.4f} | {b:.4f} | {b / f:.3f} | {g:.4f} | {g / f:.3f} |")
    lines += ["", "tp, sp and pp carry activations (bf16); dp (the gradient reduction) and replica",
              "(shared weights summed over stages) carry fp32 gradients, as the recipe says, unless",
              "`parallel.grad_reduce_dtype: BF16` rounds the dp buckets to bf16 (last columns; the",
              "replica sums stay fp32). With ZeRO-1 the parameters' all-gather stays fp32, so",
              "there dp carries 2/3 of fp32's bytes (tests/parallel/precision_equivalence.py).", ""]
    final = {p: [m for m in r if "val_loss" in m][-1] for p, r in runs.items()}
    diff = final["BF16"]["val_loss"] / final["FP32"]["val_loss"] - 1
    lines += [f"Loss curves, {final['FP32']['step']} steps of configs/default.textproto "
              "(docs/precision.svg): final validation loss FP32 "
              f"{final['FP32']['val_loss']:.4f}, BF16 {final['BF16']['val_loss']:.4f} "
              f"({100 * diff:+.2f} %).", "", "![loss curves](precision.svg)", ""]
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("loom")
    parser.add_argument("source")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--gpt2-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs")
    args = parser.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else None
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-precision-")
    os.chdir(work)
    try:
        bench_common.prepare_data(loom, source)
        rows = shapes(loom, source, args.gpt2_steps, args.repeats)
        sent = traffic(loom)
        runs = curves(loom, source, args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = report(rows, sent, runs, bench_common.rerun_command("precision.py", args.write_docs))
    print("\n".join(lines))
    if docs:
        bench_common.write_section(docs, SECTION, lines, {"precision.svg": chart_svg(runs)})


if __name__ == "__main__":
    main()
