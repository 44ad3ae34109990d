#!/usr/bin/env python3
"""Tensor-parallel benchmark of Ladder Residual: step time and exposed communication time (the
time a rank blocks on communication, mostly the tensor-parallel all-reduces after each attention
and MLP sub-layer; `comm_wait_ms` in metrics.jsonl) of the same plain GPT with the standard
residual and with the ladder residual (each sub-layer reads the stream from before its
predecessor, so its predecessor's all-reduce can run while it computes), at each tp. Strong
scaling: the tensor-parallel ranks split one micro-batch's work, so the single-process runs (one
per residual) are the compute-only baseline. Prints a markdown table of medians over the steps
after 2 warm-up steps.

Conditions of the link between ranks:
  (default)          the machine as it is (shared memory between ranks on one machine);
  --slow-link RATE   (e.g. 1gbit; needs root) the ranks talk over TCP through a loopback limited
                     to RATE inside a network namespace the benchmark creates and removes
                     (tc tbf), as between machines;
  --latency SECONDS  every operation on the tp group is posted SECONDS after it was issued
                     (LOOM_FAULT=rank=*,group=tp,op=*,action=delay,seconds=S): a per-operation
                     latency, which the ladder residual can hide and the standard one cannot.
The two options combine.

With --write-docs FILE (docs/benchmarks.md) the table, the command and the machine replace this
condition's subsection of the section "## Tensor parallelism and Ladder Residual" of FILE (other
conditions' subsections are kept; the section is appended when missing), and a bar chart of the
step times is written beside FILE (tp_ladder.svg; tp_ladder-<condition>.svg for the others).

usage: tp_ladder.py LOOM_BINARY SOURCE_DIR [--tp 2,4] [--dp 1] [--steps 10] [--set key=value ...]
                    [--slow-link RATE] [--latency SECONDS] [--write-docs FILE]
"""
import argparse
import datetime
import os
import shlex
import shutil
import sys
import tempfile
import textwrap

import bench_common

SECTION = "## Tensor parallelism and Ladder Residual"
CHART = "tp_ladder.svg"
PLAIN_CONDITION = "ranks over shared memory"
WARMUP = 2
LAYERS = 8
MODEL = (f"model {{ vocab_size: 257 d_model: 384 n_heads: 8 d_mlp: 1536 max_seq_len: 128 "
         f"prelude_layers: 0 block_layers: {LAYERS} loops: 1 coda_layers: 0 "
         f"tie_embeddings: false lm_head_chunk: 512 }}")
MODEL_TEXT = (f"plain GPT, {LAYERS} layers, d_model 384, 8 heads, d_mlp 1536, vocab 257 "
              "(untied head)")
MICRO_BATCH = 4
BATCH_TEXT = f"micro-batch {MICRO_BATCH} × 128 tokens, 1 thread per rank"
RESIDUALS = ("STANDARD", "LADDER")


def measure(loom, args, link):
    """{(tp, residual): (ms/step, exposed comm ms)} for tp = 1 and every tp of --tp."""
    env = {}
    if args.latency:
        env["LOOM_FAULT"] = f"rank=*,group=tp,op=*,action=delay,seconds={args.latency}"
    results = {}
    for tp in [1] + args.tp:
        for residual in RESIDUALS:
            sets = [f"train.steps={args.steps}", f"train.global_batch={MICRO_BATCH * args.dp}",
                    f"parallel.tp={tp}", f"parallel.dp={args.dp}",
                    f"model.residual={residual}"] + args.set
            run_dir = bench_common.train(loom, "bench.textproto", f"run-tp{tp}-{residual}", sets,
                                         ranks=tp * args.dp, link=link,
                                         env=env if tp > 1 else None)
            results[(tp, residual)] = bench_common.step_medians(run_dir, warmup=WARMUP)
            ms, comm = results[(tp, residual)]
            print(f"  tp {tp} {residual.lower()}: {ms:.1f} ms/step, {comm:.1f} ms exposed "
                  "communication", file=sys.stderr)
    return results


def table(results, tps, dp):
    """The markdown table: one row per (tp, residual); the ladder rows carry the ratios."""
    rows = ["| tp | residual | ms/step | exposed comm ms | comm share of step | speed-up vs tp = 1 "
            "| ladder / standard: exposed comm | ladder / standard: step |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tp in [1] + tps:
        std_ms, std_comm = results[(tp, "STANDARD")]
        for residual in RESIDUALS:
            ms, comm = results[(tp, residual)]
            base_ms = results[(1, residual)][0]
            ratios = "| | |"
            if residual == "LADDER" and tp > 1:
                comm_ratio = f"{comm / std_comm:.2f}×" if std_comm > 0 else "–"
                ratios = f"| {comm_ratio} | **{ms / std_ms:.2f}×** |"
            rows.append(f"| {tp}{'*' if tp * dp > os.cpu_count() else ''} | {residual.lower()} | "
                        f"{ms:.1f} | {comm:.1f} | {comm / ms:.0%} | {base_ms / ms:.2f} {ratios}")
    return "\n".join(rows)


def summary(results, tps):
    """One sentence per tp saying what the ladder residual changed."""
    lines = []
    for tp in tps:
        std_ms, std_comm = results[(tp, "STANDARD")]
        lad_ms, lad_comm = results[(tp, "LADDER")]
        lines.append(f"At tp = {tp} the standard step spends {std_comm:.1f} of {std_ms:.1f} ms "
                     f"({std_comm / std_ms:.0%}) waiting for communication; the ladder step "
                     f"waits {lad_comm:.1f} ms and takes {lad_ms:.1f} ms "
                     f"({lad_ms / std_ms:.2f}× the standard step).")
    return " ".join(lines)


def svg_chart(results, tps, dp, condition):
    """A grouped, stacked bar chart (hand-written SVG): per tp a standard and a ladder bar of
    ms/step, split into exposed communication and the rest of the step; under a tp whose ranks
    outnumber the cores, how many share them."""
    width, left, right, top, bottom, plot_h = 680, 70, 20, 36, 90, 256
    height, plot_w = top + plot_h + bottom, width - left - right
    peak = max(ms for ms, _ in results.values())
    step = bench_common.tick_step(peak)
    ticks = int(peak / step) + 1
    y_max = step * ticks

    def y(value):
        return top + plot_h * (1 - value / y_max)

    colours = {"STANDARD": "#4c72b0", "LADDER": "#55a868", "comm": "#dd8452"}
    out = []
    for k in range(ticks + 1):
        value = k * step
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" '
                   f'y2="{y(value):.1f}" stroke="#dddddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    out.append(bench_common.axis_label("y", "ms per step (median)", 16, top + plot_h / 2,
                                       rotated=True))
    groups = [1] + tps
    group_w = plot_w / len(groups)
    bar_w = min(60, group_w / 3)
    for g, tp in enumerate(groups):
        centre = left + group_w * (g + 0.5)
        for b, residual in enumerate(RESIDUALS):
            ms, comm = results[(tp, residual)]
            x = centre - bar_w - 2 if b == 0 else centre + 2
            out.append(f'<rect x="{x:.1f}" y="{y(ms - comm):.1f}" width="{bar_w:.1f}" '
                       f'height="{y(0) - y(ms - comm):.1f}" fill="{colours[residual]}"/>')
            if comm > 0:
                out.append(f'<rect x="{x:.1f}" y="{y(ms):.1f}" width="{bar_w:.1f}" '
                           f'height="{y(ms - comm) - y(ms):.1f}" fill="{colours["comm"]}"/>')
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y(ms) - 4:.1f}" '
                       f'text-anchor="middle">{ms:.0f}</text>')
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y(0) + 15:.1f}" '
                       f'text-anchor="middle" font-size="11">{residual.lower()}</text>')
        out.append(f'<text x="{centre:.1f}" y="{y(0) + 34:.1f}" text-anchor="middle" '
                   f'font-size="13">tp = {tp}</text>')
        if tp * dp > os.cpu_count():
            out.append(f'<text x="{centre:.1f}" y="{y(0) + 50:.1f}" text-anchor="middle" '
                       f'font-size="11">{tp * dp} ranks on {os.cpu_count()} cores</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
               'stroke="black"/>')
    ranks = "ranks = tp" if dp == 1 else f"ranks = tp × dp {dp}"
    out.append(bench_common.axis_label("x", f"tensor-parallel size tp ({ranks})",
                                       left + plot_w / 2, y(0) + 72))
    legend = [("STANDARD", "standard: rest of step"), ("LADDER", "ladder: rest of step"),
              ("comm", "exposed communication")]
    x, legend_y = left, top - 22
    for key, text in legend:
        out.append(f'<rect x="{x}" y="{legend_y}" width="12" height="12" '
                   f'fill="{colours[key]}"/>')
        out.append(f'<text x="{x + 17}" y="{legend_y + 10}">{text}</text>')
        x += 30 + 7 * len(text)
    return bench_common.chart_svg(
        width, height, out, "Tensor parallelism: ms per step, standard vs ladder residual",
        bench_common.hardware_line([tp * dp for tp in groups], 1), condition)


def replace_section(path, heading, body):
    """Replaces the section of markdown file `path` that starts with the line `heading` (up to
    the next heading of the same level) by heading + body; appends it when absent."""
    text = open(path).read() if os.path.exists(path) else ""
    lines = text.splitlines(keepends=True)
    level = heading.split(" ", 1)[0] + " "
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    section = heading + "\n\n" + body.rstrip("\n") + "\n"
    if start is None:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)),
                   len(lines))
        after = "".join(lines[end:])
        text = "".join(lines[:start]) + section + ("\n" + after if after else "")
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--tp", default="2,4", help="tensor-parallel sizes, e.g. 2,4 (tp = 1, the "
                    "baseline, is always measured)")
    ap.add_argument("--dp", type=int, default=1,
                    help="data-parallel ranks of every run (ranks = tp · dp); 1: the tp = 1 "
                    "runs are the compute-only baseline")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    ap.add_argument("--slow-link", default="", help="rate of the emulated link, e.g. 1gbit")
    ap.add_argument("--latency", type=float, default=0,
                    help="seconds added to every tp operation (LOOM_FAULT op=*)")
    ap.add_argument("--write-docs", default="", metavar="FILE",
                    help="replace the section in FILE (docs/benchmarks.md), write the chart")
    args = ap.parse_args()
    try:
        tps = [int(x) for x in args.tp.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--tp {args.tp}: expected comma-separated integers, e.g. 2,4")
    if any(tp < 1 for tp in tps) or args.dp < 1:
        ap.error("--tp and --dp take positive sizes")
    args.tp = sorted(set(tps) - {1})
    if args.steps <= WARMUP:
        ap.error(f"--steps must exceed the {WARMUP} warm-up steps")
    if args.latency < 0:
        ap.error("--latency must not be negative")
    script = os.path.abspath(sys.argv[0])
    source = os.path.abspath(args.source)
    command = shlex.join(["python3", os.path.relpath(script, source)] + sys.argv[1:])
    loom = os.path.abspath(args.loom)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-tpbench-")
    os.chdir(work)
    try:
        with bench_common.slow_link(args.slow_link) as link:
            bench_common.prepare_data(loom, source)
            with open("bench.textproto", "w") as f:
                f.write(bench_common.bench_config(MODEL, MICRO_BATCH, 128))
            results = measure(loom, args, link)
    except bench_common.BenchError as e:
        sys.exit(f"tp_ladder: {e}")
    except KeyboardInterrupt:
        sys.exit("tp_ladder: interrupted")
    finally:
        os.chdir(source)
        shutil.rmtree(work, ignore_errors=True)

    conditions = [c for c in (link.description, args.latency and
                              f"{args.latency * 1000:g} ms added to every tp operation "
                              "(LOOM_FAULT op=*)") if c] or [PLAIN_CONDITION]
    condition = ", ".join(conditions)
    report = report_text(results, args, condition)
    print(report)
    if docs:
        write_docs(docs, results, args.tp, args.dp, condition, report, command)


def report_text(results, args, condition):
    """What the benchmark found: how it ran, the table, one sentence per tp."""
    dp_text = f"; dp = {args.dp} (ranks = tp · {args.dp})" if args.dp > 1 else ""
    header = (f"{MODEL_TEXT}; {BATCH_TEXT}{dp_text}; {args.steps} steps, medians after "
              f"{WARMUP} warm-up steps; {condition}. Device: {bench_common.cpu_description()}.")
    footnote = ""
    if any(tp * args.dp > os.cpu_count() for tp in args.tp):
        footnote = f"\n\n\\* more ranks than the {os.cpu_count()} cores: ranks share cores."
    text = f"{textwrap.fill(header, 100)}\n\n{table(results, args.tp, args.dp)}{footnote}"
    if args.tp:
        text += "\n\n" + textwrap.fill(summary(results, args.tp), 100)
    return text


def write_docs(docs, results, tps, dp, condition, report, command):
    """Writes this condition's subsection (### condition) of the benchmark's section of `docs`,
    keeping the other conditions' subsections, and its chart beside it."""
    chart = CHART if condition == PLAIN_CONDITION else (
        "tp_ladder-" + "".join(c if c.isalnum() else "-" for c in condition.lower())[:40]
        .strip("-") + ".svg")
    with open(os.path.join(os.path.dirname(docs), chart), "w") as f:
        f.write(svg_chart(results, tps, dp,
                          f"{MODEL_TEXT}; micro-batch {MICRO_BATCH} × 128 tokens; {condition}"))
    intro = ("`tests/bench/tp_ladder.py` trains the same model with `parallel.tp` = 1 (one "
             "process, no communication: the compute-only baseline) and each tp, with "
             "`model.residual` STANDARD and LADDER. Exposed communication = time a rank blocks "
             "on communication (`comm_wait_ms` in metrics.jsonl), mostly the tensor-parallel "
             "all-reduces after each attention and MLP sub-layer. One subsection per condition "
             "of the link between the ranks.")
    subsections = {}
    text = open(docs).read() if os.path.exists(docs) else ""
    start = text.find(SECTION + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        old = text[start:end if end >= 0 else len(text)]
        for part in old.split("\n### ")[1:]:
            subsections[part.split("\n", 1)[0]] = "### " + part.rstrip("\n") + "\n"
    subsections[condition] = (f"### {condition}\n\nMeasured {datetime.date.today().isoformat()}"
                              f" with\n\n```\n{command}\n```\n\n{report}\n\n"
                              f"![ms per step, exposed communication on top]({chart})\n")
    order = sorted(subsections, key=lambda c: (c != PLAIN_CONDITION, c))
    body = textwrap.fill(intro, 100) + "\n\n" + "\n".join(subsections[c] for c in order)
    replace_section(docs, SECTION, body)
    print(f"\nwrote \"{condition}\" in the section \"{SECTION[3:]}\" of {docs} and {chart}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
