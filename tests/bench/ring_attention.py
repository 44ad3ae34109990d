#!/usr/bin/env python3
"""Ring sequence parallelism: balance of the zigzag layout, efficiency of the ring, and the
longest sequence that trains within a fixed memory budget.

(1) balance and (2) efficiency come from `loom bench ring` under mpirun (one thread per rank):
each rank's block-kernel time per step (forward + backward of attention over --seq-len tokens),
max ÷ min over the ranks, for the zigzag layout and the contiguous one, and for Ulysses (two
all-to-alls to a head split around whole-sequence attention); the time on the slowest rank
against the ideal, the whole sequence's attention on one rank ÷ sp, with the time blocked on
transfers (exposed wait) as a share of it; and the bytes each rank sent. (3) For sp = 1, 2, 4 (and Ulysses at 2, 4), `loom plan
--memory-gb` finds the longest train.seq_len whose memory per rank (parameters, gradients, AdamW
state, activation arena) fits the budget; one training step at that length then runs under
mpirun, and its measured activation peak is compared with the plan. With --write-docs it writes
its section of docs/benchmarks.md and an SVG chart beside it.

usage: ring_attention.py LOOM SOURCE [--seq-len 4096] [--budget-mib 48] [--write-docs FILE]
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Ring sequence parallelism: balance, efficiency and the longest sequence"
METHODS = (("zigzag", "ring, zigzag"), ("contiguous", "ring, contiguous"),
           ("ulysses", "Ulysses (all-to-all)"))
MODEL = ("model {{ vocab_size: 257 d_model: 64 n_heads: 4 d_mlp: 256 max_seq_len: {T} "
         "position: ROTARY norm: RMSNORM prelude_layers: 1 block_layers: 2 loops: 3 "
         "coda_layers: 0 }}")
MODEL_TEXT = ("looped GPT with rotary positions, 1 + 2 × 3 = 7 unrolled layers, d_model 64, "
              "4 heads, d_mlp 256")


def bench_ring(loom, sp, seq_len):
    out = bench_common.run_command(
        bench_common.mpirun_command(sp) + [loom, "bench", "ring", "--seq-len", str(seq_len),
                                           "--iters", "9", "--json"],
        f"loom bench ring (sp {sp})", env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    line = next(l for l in out.splitlines() if l.startswith("{"))
    return json.loads(line)


def parallel_section(sp, method):
    return "parallel { sp: %d sequence_method: %s }" % (sp, method)


def longest(loom, sp, method, budget_mib):
    """(seq_len, planned MiB per rank, planned activation MiB) from `loom plan --memory-gb`."""
    with open("plan.textproto", "w") as f:
        f.write(bench_common.bench_config(MODEL.format(T=256), 1, 2 * sp,
                                          parallel_section(sp, method)))
    out = bench_common.run_command(
        [loom, "plan", "plan.textproto", "--memory-gb", str(budget_mib / 1024)], "loom plan")
    found = re.search(r"train\.seq_len (\d+) \(\d+ tokens per sp rank\): ([0-9.]+) MiB", out)
    if not found:
        raise bench_common.BenchError(f"loom plan printed no longest sequence:\n{out}")
    T = int(found.group(1))
    with open("at.textproto", "w") as f:
        f.write(bench_common.bench_config(MODEL.format(T=T), 1, T, parallel_section(sp, method)))
    plan = bench_common.run_command([loom, "plan", "at.textproto"], "loom plan")
    activations = float(re.search(r"^  activations\s+([0-9.]+)", plan, re.M).group(1))
    return T, float(found.group(2)), activations


def train_at(loom, sp, method, T):
    """One training step at seq_len T on sp ranks; the measured activation peak (MiB)."""
    with open("at.textproto", "w") as f:
        f.write(bench_common.bench_config(MODEL.format(T=T), 1, T, parallel_section(sp, method)))
    run_dir = bench_common.train(loom, "at.textproto", f"run-sp{sp}-{method}",
                                 ["train.steps=1", "train.global_batch=1"], ranks=sp, timeout=900)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return json.loads(f.readline())["activation_peak_mib"]


def chart_svg(ring2, memory, budget_mib):
    """Two panels: per-rank compute at sp 2 by layout; the longest sequence by sp."""
    w, h, pad = 640, 260, 40
    parts = []
    # Left: compute ms per rank, zigzag and contiguous.
    bars = [(f"rank {r}", rank["compute_ms"], color)
            for name, color in (("zigzag", "#3b7dd8"), ("contiguous", "#d8833b"))
            for r, rank in enumerate(ring2["layouts"][name]["ranks"])]
    top = max(b[1] for b in bars)
    x0, width = pad, (w / 2 - 2 * pad) / len(bars)
    parts.append(bench_common.axis_label("y", "attention compute per rank, sp 2 (ms)", x0, 16,
                                         anchor="start"))
    parts.append(bench_common.axis_label("x", "rank, by layout", w / 4, h - 6))
    parts.append(f'<text x="{x0}" y="30"><tspan fill="#3b7dd8">zigzag</tspan>, '
                 '<tspan fill="#d8833b">contiguous</tspan></text>')
    for i, (label, value, color) in enumerate(bars):
        bh = (h - 2 * pad) * value / top
        x = x0 + i * width
        parts.append(f'<rect x="{x + 4:.1f}" y="{h - pad - bh:.1f}" width="{width - 8:.1f}" '
                     f'height="{bh:.1f}" fill="{color}"/>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{h - pad + 14}" text-anchor="middle">'
                     f'{label}</text>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{h - pad - bh - 4:.1f}" '
                     f'text-anchor="middle">{value:.0f}</text>')
    # Right: longest seq_len by sp, with the ∝ sp line from sp 1.
    x0 = w / 2 + pad
    width = (w / 2 - 2 * pad) / len(memory)
    top = max(max(m["T"] for m in memory), memory[0]["T"] * memory[-1]["sp"])
    parts.append(bench_common.axis_label("y", "longest seq_len in the budget (tokens)", x0, 16,
                                         anchor="start"))
    parts.append(bench_common.axis_label("x", "sequence-parallel size sp (ranks)", 3 * w / 4,
                                         h - 6))
    for i, m in enumerate(memory):
        bh = (h - 2 * pad) * m["T"] / top
        ideal = (h - 2 * pad) * memory[0]["T"] * m["sp"] / top
        x = x0 + i * width
        parts.append(f'<rect x="{x + 8:.1f}" y="{h - pad - bh:.1f}" width="{width - 16:.1f}" '
                     f'height="{bh:.1f}" fill="#3b7dd8"/>')
        parts.append(f'<line x1="{x + 4:.1f}" x2="{x + width - 4:.1f}" y1="{h - pad - ideal:.1f}" '
                     f'y2="{h - pad - ideal:.1f}" stroke="black" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{h - pad + 14}" text-anchor="middle">'
                     f'sp {m["sp"]}</text>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{h - pad - bh + 14:.1f}" '
                     f'text-anchor="middle" fill="white">{m["T"]}</text>')
    parts.append(f'<text x="{x0}" y="{h + 14}">dashed: sp × the sp 1 length</text>')
    ranks = sorted({2} | {m["sp"] for m in memory})
    return bench_common.chart_svg(
        w, h + 20, parts,
        f"Ring attention: rank balance, longest sequence in {budget_mib:g} MiB per rank",
        bench_common.hardware_line(ranks, 1),
        f"left: attention forward + backward over one sequence of {ring2['T']} tokens "
        f"(loom bench ring, median of 9 iterations); right: the longest train.seq_len whose "
        f"planned memory per rank fits {budget_mib:g} MiB (loom plan --memory-gb), {MODEL_TEXT}, "
        "micro-batch 1; MPI over shared memory", font_size=11)


def ulysses_ratio(ring, field):
    """Ulysses' slowest rank ÷ the zigzag ring's, for `field` (ring_ms or sent_mib)."""
    return (max(x[field] for x in ring["layouts"]["ulysses"]["ranks"]) /
            max(x[field] for x in ring["layouts"]["zigzag"]["ranks"]))


def write_docs(docs, rings, memory, budget_mib, command):
    ring2 = rings[2]
    lines = [SECTION, "",
             f"Measured on {bench_common.cpu_description()}, one thread per rank, MPI over shared "
             f"memory, with `{command}`.", "",
             f"Attention (forward + backward) over one sequence of {ring2['T']} tokens, "
             f"C = {ring2['C']}, {ring2['H']} heads (`loom bench ring`); whole = the whole "
             "sequence on one rank; compute = each rank's kernels (Ulysses: its time not blocked "
             "on the all-to-alls, which includes packing rows for them); balance = max ÷ min "
             "compute; efficiency = (whole ÷ sp) ÷ the slowest rank's time; exposed = the "
             "largest share of a rank's time spent blocked on transfers; sent = what one rank "
             "sends per forward + backward.", "",
             "| sp | method | compute per rank (ms) | balance | time (ms) | efficiency | exposed wait | sent per rank (MiB) |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for sp, ring in sorted(rings.items()):
        for name, title in METHODS:
            r = ring["layouts"][name]
            computes = ", ".join(f"{x['compute_ms']:.0f}" for x in r["ranks"])
            slowest = max(x["ring_ms"] for x in r["ranks"])
            sent = max(x["sent_mib"] for x in r["ranks"])
            lines.append(f"| {sp} | {title} | {computes} | {r['balance']:.2f} | {slowest:.0f} "
                         f"(whole {ring['whole_ms']:.0f}) | {r['efficiency']:.2f} | "
                         f"{100 * r['exposed']:.1f}% | {sent:.2f} |")
    lines += ["", "Ulysses against the zigzag ring: " + "; ".join(
        f"sp {sp}: time {ulysses_ratio(ring, 'ring_ms'):.2f}×, bytes sent "
        f"{ulysses_ratio(ring, 'sent_mib'):.2f}×" for sp, ring in sorted(rings.items())) +
        ". Ulysses sends (sp − 1)/sp of the rank's q, k, v, output and their gradients once; "
        "the ring sends its key/value block sp − 1 times and the dK/dV accumulators around "
        "again, so Ulysses' share falls as sp grows."]
    lines += ["", "Medians of 9 iterations per rank. On a small shared VM the times move by 10–20 % "
              "from run to run (a slower core skews one rank's compute); rerun the command to see "
              "the spread."]
    over = [sp for sp in rings if sp > (os.cpu_count() or 1)]
    if over:
        lines += ["", f"sp {', '.join(map(str, over))}: more ranks than the machine's "
                  f"{os.cpu_count()} cores, so ranks share cores and the times (not the balance "
                  "of work) are the machine's, not the ring's."]
    lines += ["", f"Longest sequence within {budget_mib} MiB per rank ({MODEL_TEXT}; micro-batch 1; "
              "`loom plan --memory-gb`), then one training step at that length under mpirun:", "",
              "| sp | method | longest seq_len | × sp 1 | planned MiB per rank | activations planned (MiB) | activation peak measured (MiB) |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for m in memory:
        method = "—" if m["sp"] == 1 else "ring" if m["method"] == "RING" else "Ulysses"
        lines.append(f"| {m['sp']} | {method} | {m['T']} | {m['T'] / memory[0]['T']:.2f} | "
                     f"{m['mib']:.1f} | {m['activations']:.1f} | {m['measured']:.1f} |")
    lines += ["", "Parameters, gradients and AdamW state are the same on every sp rank, and each "
              "rank also holds ring attention's key/value blocks and their gradients in flight "
              "(10·C values per local token, shared by the layers), so the length grows a little "
              "less than ∝ sp. Ulysses holds its all-to-all blocks and a head group's output, "
              "output gradient and dq, dk, dv instead (11·C values per local token here).", "",
              "![ring attention](ring_attention.svg)", ""]
    ring_memory = [m for m in memory if m["method"] == "RING"]
    bench_common.write_section(docs, SECTION, lines,
                               {"ring_attention.svg": chart_svg(ring2, ring_memory, budget_mib)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--sp", default="2,4", help="sp sizes for the balance and efficiency runs")
    ap.add_argument("--budget-mib", type=float, default=48)
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-ringbench-")
    os.chdir(work)
    try:
        rings = {}
        for sp in (int(x) for x in args.sp.split(",")):
            rings[sp] = bench_ring(loom, sp, args.seq_len)
            for name, r in rings[sp]["layouts"].items():
                print(f"sp {sp} {name}: compute per rank "
                      f"{[round(x['compute_ms']) for x in r['ranks']]} ms, balance "
                      f"{r['balance']:.2f}, efficiency {r['efficiency']:.2f}, exposed wait "
                      f"{100 * r['exposed']:.1f}% (whole {rings[sp]['whole_ms']:.0f} ms)")
        bench_common.prepare_data(loom, source)
        memory = []
        for sp, method in ((1, "RING"), (2, "RING"), (4, "RING"), (2, "ULYSSES"), (4, "ULYSSES")):
            T, mib, activations = longest(loom, sp, method, args.budget_mib)
            measured = train_at(loom, sp, method, T)
            memory.append({"sp": sp, "method": method, "T": T, "mib": mib,
                           "activations": activations, "measured": measured})
            print(f"sp {sp} {method}: longest seq_len {T} in {args.budget_mib} MiB per rank "
                  f"(planned {mib:.1f} MiB; activations {activations:.1f} MiB planned, "
                  f"{measured:.1f} MiB measured in one training step)")
        if docs:
            command = bench_common.rerun_command("ring_attention.py", args.write_docs)
            write_docs(docs, rings, memory, args.budget_mib, command)
    except bench_common.BenchError as e:
        sys.exit(f"ring_attention: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
