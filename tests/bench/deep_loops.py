#!/usr/bin/env python3
"""Extremely deep looped models: activation memory and step time against the loop count R under
each train.recompute policy, and a 1000-loop model trained end to end.

(1) For R in --loops (default 4, 16, 64, 256, 1000) and each policy, `loom bench step` times
training steps of the looped model (1 prelude layer, a 2-layer block looped R times with input
injection, 1 coda layer; d_model 128, d_mlp 512; micro-batch 16 × 128 tokens) and reports its
activation arena (what `loom plan` prints; the arena is allocated whole, so it is also the
measured peak) and the process's peak resident memory. A policy whose arena exceeds --max-gib is
not run (`loom plan` gives its size). The reference is a 12-layer unshared model of the same
width under NONE. (2) With --train-steps N, the R = 1000 model trains N steps under SQRT on
byte-level text (micro-batch and sequence length from --train-shape) and its loss curve is
recorded. With --write-docs it writes its section of docs/benchmarks.md and an SVG chart of
memory against R on log axes.

usage: deep_loops.py LOOM SOURCE [--loops 4,16,64,256,1000] [--max-gib 16]
                     [--train-steps 50] [--write-docs FILE]
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Extremely deep loops: recomputation, memory and step time"
POLICIES = ("NONE", "LOOP_BOUNDARY", "SQRT")
COLOURS = {"NONE": "#e15759", "LOOP_BOUNDARY": "#4e79a7", "SQRT": "#59a14f"}
LOOPED = ("model {{ vocab_size: 257 d_model: 128 n_heads: 4 d_mlp: 512 max_seq_len: 128 "
          "prelude_layers: 1 block_layers: 2 loops: {R} coda_layers: 1 input_injection: true }}")
TWELVE = ("model { vocab_size: 257 d_model: 128 n_heads: 4 d_mlp: 512 max_seq_len: 128 "
          "prelude_layers: 0 block_layers: 12 loops: 1 coda_layers: 0 }")


def write_config(name, model, micro_batch=16, seq_len=128, extra=""):
    path = f"{name}.textproto"
    with open(path, "w") as f:
        f.write(bench_common.bench_config(model, micro_batch, seq_len, extra))
    return path


def planned_activations_mib(loom, config, policy):
    out = bench_common.run_command([loom, "plan", config, "--set", f"train.recompute={policy}"],
                                   "loom plan")
    return float(re.search(r"^  activations +([0-9.]+) ", out, re.M).group(1))


def bench_step(loom, config, policy, steps, warmup):
    out = bench_common.run_command(
        [loom, "bench", "step", config, "--set", f"train.recompute={policy}", "--set",
         "runtime.threads=0", "--steps", str(steps), "--warmup", str(warmup), "--json"],
        f"loom bench step ({config}, {policy})")
    return json.loads(out.strip().splitlines()[-1])


def steps_for(R):
    """(timed steps, warm-up steps): fewer for the deep models, whose one step takes minutes."""
    if R >= 1000:
        return 1, 0
    if R >= 256:
        return 2, 0
    return 3, 1


def measure(loom, loops, max_gib):
    rows = []
    twelve = write_config("twelve", TWELVE)
    r = bench_step(loom, twelve, "NONE", 3, 1)
    reference = {"arena": r["activation_mib"], "rss": r["max_rss_mib"], "ms": r["ms_per_step"]}
    print(f"12 unshared layers, NONE: arena {reference['arena']:.1f} MiB, "
          f"rss {reference['rss']:.0f} MiB, {reference['ms']:.0f} ms/step")
    for R in loops:
        config = write_config(f"loops{R}", LOOPED.format(R=R))
        for policy in POLICIES:
            planned = planned_activations_mib(loom, config, policy)
            row = {"R": R, "policy": policy, "planned": planned}
            if planned > max_gib * 1024:
                row["skipped"] = True
                print(f"R {R} {policy}: arena {planned / 1024:.1f} GiB > {max_gib} GiB, not run")
            else:
                steps, warmup = steps_for(R)
                b = bench_step(loom, config, policy, steps, warmup)
                row.update(arena=b["activation_mib"], rss=b["max_rss_mib"], ms=b["ms_per_step"],
                           steps=steps)
                print(f"R {R} {policy}: arena {row['arena']:.1f} MiB (plan {planned:.1f}), "
                      f"rss {row['rss']:.0f} MiB, {row['ms']:.0f} ms/step")
            rows.append(row)
    return reference, rows


def train_deep(loom, source, steps, shape):
    micro_batch, seq_len = shape
    bench_common.prepare_data(loom, source)
    model = LOOPED.format(R=1000).replace("max_seq_len: 128", f"max_seq_len: {seq_len}")
    config = write_config("deep1000", model, micro_batch, seq_len)
    cmd = [loom, "train", config, "--run-dir", "deep1000"]
    for s in (f"train.steps={steps}", f"train.global_batch={micro_batch}", "train.recompute=SQRT",
              "optim.lr=2e-3", "optim.warmup_steps=10", "logging.interval=5", "runtime.threads=0"):
        cmd += ["--set", s]
    bench_common.run_command(cmd, "loom train (1000 loops)")
    with open(os.path.join("deep1000", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def chart_svg(reference, rows, max_gib):
    """Activation arena (MiB) against R, log–log, one line per policy; the 12-layer reference."""
    w, h, left, right, top, bottom = 620, 340, 70, 150, 30, 45
    done = [r for r in rows if "arena" in r] + [r for r in rows if r.get("skipped")]
    values = [r.get("arena", r["planned"]) for r in done] + [reference["arena"]]
    Rs = sorted({r["R"] for r in rows})
    lo_y, hi_y = math.log10(min(values) / 1.5), math.log10(max(values) * 1.5)
    lo_x, hi_x = math.log10(Rs[0] / 1.3), math.log10(Rs[-1] * 1.3)
    X = lambda R: left + (w - left - right) * (math.log10(R) - lo_x) / (hi_x - lo_x)  # noqa: E731
    Y = lambda v: h - bottom - (h - top - bottom) * (math.log10(v) - lo_y) / (hi_y - lo_y)  # noqa: E731
    p = [bench_common.axis_label("y", "activation arena (MiB, log scale)", 14,
                                 (top + h - bottom) / 2, rotated=True)]
    for e in range(math.ceil(lo_y), math.floor(hi_y) + 1):
        y = Y(10 ** e)
        p.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        p.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for R in Rs:
        p.append(f'<text x="{X(R):.1f}" y="{h - bottom + 16}" text-anchor="middle">{R}</text>')
    p.append(bench_common.axis_label("x", "loop count R (log scale)", (left + w - right) / 2,
                                     h - 8))
    y = Y(reference["arena"])
    p.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="black" '
             'stroke-dasharray="5 4"/>')
    p.append(f'<text x="{w - right + 6}" y="{y + 4:.1f}">12 layers, NONE</text>')
    for i, policy in enumerate(POLICIES):
        pts = [(X(r["R"]), Y(r.get("arena", r["planned"])), "skipped" in r)
               for r in rows if r["policy"] == policy]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
        p.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[policy]}" '
                 'stroke-width="2"/>')
        for x, y, skipped in pts:
            fill = "white" if skipped else COLOURS[policy]
            p.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" '
                     f'stroke="{COLOURS[policy]}"/>')
        p.append(f'<text x="{w - right + 6}" y="{top + 16 * i + 10}" fill="{COLOURS[policy]}">'
                 f'{policy}</text>')
    p.append(f'<text x="{w - right + 6}" y="{top + 56}">open: planned,</text>')
    p.append(f'<text x="{w - right + 6}" y="{top + 70}">too big to run</text>')
    # bench_step sets runtime.threads 0: a thread per core.
    return bench_common.chart_svg(
        w, h, p, "Activation memory against loop count R, by recomputation policy",
        bench_common.hardware_line(1, os.cpu_count()),
        "loom bench step, looped GPT (1 prelude layer, a 2-layer block looped R times, 1 coda "
        f"layer), d_model 128, micro-batch 16 × 128 tokens; open circle: the planned arena, over "
        f"the {max_gib:g} GiB limit, not run", font_size=11)


def write_docs(docs, reference, rows, curve, args, command):
    by = {(r["R"], r["policy"]): r for r in rows}
    lines = [SECTION, "",
             f"Measured on {bench_common.cpu_description()}, 2 threads, with `{command}`.", "",
             "Looped GPT: 1 prelude layer, a 2-layer block looped R times with input injection, 1 "
             "coda layer (2R + 2 unrolled layers); d_model 128, 4 heads, d_mlp 512, vocabulary 257; "
             "micro-batch 16 × 128 tokens; `loom bench step` (forward, backward, AdamW on one "
             "micro-batch). Arena = the activation arena (`loom plan` prints the same figure; it is "
             "allocated whole, so it is the measured peak); RSS = the process's peak resident "
             "memory (parameters, optimizer, arena, libraries). Step-time ratios are against NONE at "
             "the same R.", "",
             f"Reference, 12 unshared layers of the same width under NONE: arena "
             f"**{reference['arena']:.1f} MiB**, RSS {reference['rss']:.0f} MiB, "
             f"{reference['ms']:.0f} ms per step.", "",
             "| R | policy | arena (MiB) | RSS (MiB) | ms per step | × NONE |",
             "|---:|---|---:|---:|---:|---:|"]
    for R in sorted({r["R"] for r in rows}):
        none = by.get((R, "NONE"))
        for policy in POLICIES:
            r = by[(R, policy)]
            if r.get("skipped"):
                lines.append(f"| {R} | {policy} | {r['planned']:.1f} (planned) | — | not run: "
                             f"over {args.max_gib} GiB | — |")
                continue
            ratio = (f"{r['ms'] / none['ms']:.2f}" if none and "ms" in none else "—")
            lines.append(f"| {R} | {policy} | {r['arena']:.1f} | {r['rss']:.0f} | "
                         f"{r['ms']:.0f} (median of {r['steps']}) | {ratio} |")
    sqrt1000 = by.get((1000, "SQRT"))
    if sqrt1000 and "arena" in sqrt1000:
        lines += ["", f"R = 1000 under SQRT: arena {sqrt1000['arena']:.1f} MiB against the 12-layer "
                  f"model's {reference['arena']:.1f} MiB "
                  f"({sqrt1000['arena'] / reference['arena']:.2f}×)."]
    # Where NONE did not fit: its time extrapolated from the deepest NONE that ran, per layer.
    ran = [r for r in rows if r["policy"] == "NONE" and "ms" in r]
    for R in sorted({r["R"] for r in rows if r["policy"] == "NONE" and r.get("skipped")}):
        if not ran:
            break
        base = max(ran, key=lambda r: r["R"])
        none_ms = base["ms"] / (2 * base["R"] + 2) * (2 * R + 2)
        ratios = ", ".join(f"{p} {by[(R, p)]['ms'] / none_ms:.2f}×" for p in POLICIES[1:]
                           if "ms" in by.get((R, p), {}))
        lines += ["", f"R = {R} under NONE would need {by[(R, 'NONE')]['planned'] / 1024:.1f} GiB; "
                  f"its step, extrapolated from R = {base['R']} per unrolled layer, would take about "
                  f"{none_ms / 1000:.0f} s: {ratios} (estimates)."]
    lines += ["", "What each policy costs: LOOP_BOUNDARY runs every unit's forward twice (except the "
              "chunk's last unit, whose activations are still in the workspace when its backward "
              "starts), about one forward more per step, or less at large R, where NONE's arena no "
              "longer stays in cache; SQRT also walks each segment up to its last unit once more "
              "to keep the unit states, close to a second extra forward, for O(√R) memory. Step "
              "times move by 10–20 % between runs on this shared VM.",
              "", "![activation memory against R](deep_loops.svg)", ""]
    if curve:
        first, last = curve[0], curve[-1]
        windows = [curve[i:i + 10] for i in range(0, len(curve), 10)]
        lines += [f"End to end: the R = 1000 model (2002 unrolled layers, the same width) trained "
                  f"{len(curve)} steps under SQRT on byte-level Python source, micro-batch "
                  f"{args.train_shape[0]} × {args.train_shape[1]} tokens (smaller than above so "
                  "that 50 steps take minutes, not hours); activation peak "
                  f"{last['activation_peak_mib']:.1f} MiB; median "
                  f"{sorted(m['ms_per_step'] for m in curve)[len(curve) // 2] / 1000:.1f} s per step.",
                  "", "Mean training loss (nats per token; each step's loss is one batch of "
                  f"{args.train_shape[0] * args.train_shape[1]} tokens, so single steps are noisy):",
                  "", "| steps | " + " | ".join(f"{w[0]['step']}–{w[-1]['step']}" for w in windows) + " |",
                  "|---|" + "---:|" * len(windows),
                  "| loss | " + " | ".join(f"{sum(m['loss'] for m in w) / len(w):.3f}"
                                           for w in windows) + " |",
                  "", f"First step {first['loss']:.3f}, last {last['loss']:.3f}.", ""]
    bench_common.write_section(docs, SECTION, lines, {"deep_loops.svg": chart_svg(reference, rows, args.max_gib)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--loops", default="4,16,64,256,1000")
    ap.add_argument("--max-gib", type=float, default=16)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--train-shape", default="4,64", help="micro-batch,seq_len of the 1000-loop run")
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    args.train_shape = tuple(int(x) for x in args.train_shape.split(","))
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-deepbench-")
    os.chdir(work)
    try:
        reference, rows = measure(loom, [int(x) for x in args.loops.split(",")], args.max_gib)
        curve = train_deep(loom, source, args.train_steps, args.train_shape) if args.train_steps else []
        for m in curve:
            print(f"1000 loops step {m['step']}: loss {m['loss']:.4f} ({m['ms_per_step'] / 1000:.1f} s)")
        if docs:
            command = bench_common.rerun_command("deep_loops.py", args.write_docs)
            write_docs(docs, reference, rows, curve, args, command)
    except bench_common.BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
