#!/usr/bin/env python3
"""Multi-node benchmark on two namespaced nodes (cluster/netns/cluster.sh, needs root) joined by a
rate-limited link, two ranks per node (shared memory inside a node, TCP between nodes):

  1. dp 4 across the two nodes, gradient reduction overlapped with backward and not;
  2. dp 2 x tp 2 placed two ways: tp inside each node and dp across (what `loom train --hostfile`
     does), against tp across the nodes and dp inside (ranks placed round-robin by hand:
     mpirun --map-by node ... --allow-cross-node-tp);
  3. Ladder Residual against the standard residual with tp across the nodes.

Each run's median ms per step and exposed communication ms per step (metrics.jsonl, after the
warm-up steps) are printed as a markdown table with the ratios; --write-docs FILE also puts the
section and an SVG chart into FILE (docs/benchmarks.md).

usage: multinode.py LOOM_BINARY SOURCE_DIR [--rate 2gbit] [--steps 10] [--write-docs FILE]
"""
import argparse
import html
import os
import shutil
import subprocess
import sys
import tempfile

import bench_common

MODEL = ("model {{ vocab_size: 257 d_model: 256 n_heads: 4 d_mlp: 1024 max_seq_len: 64 "
         "block_layers: 4 loops: 1 tie_embeddings: false residual: {residual} }}")
CLUSTER = os.path.join("cluster", "netns", "cluster.sh")


def run_on_cluster(cluster_dir, cmd, what):
    script = f'. "{cluster_dir}/env.sh" && exec "$@"'
    return bench_common.run_command(["bash", "-c", script, "_", *cmd], what,
                                    env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--rate", default="2gbit", help="the inter-node link's rate (tc tbf)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    cluster_sh = os.path.join(source, CLUSTER)
    check = subprocess.run(["bash", cluster_sh, "check"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"multinode: cannot build the test cluster: {(check.stdout + check.stderr).strip()}")
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-multinode-bench-")
    cluster_dir = os.path.join(work, "cluster")
    os.chdir(work)
    results = {}
    try:
        bench_common.run_command(["bash", cluster_sh, "up", cluster_dir, "--nodes", "2",
                                  "--slots", "2", "--rate", args.rate], "cluster.sh up")
        hostfile = os.path.join(cluster_dir, "hostfile")
        bench_common.prepare_data(loom, source)
        for residual in ("STANDARD", "LADDER"):
            with open(f"{residual}.textproto", "w") as f:
                f.write(bench_common.bench_config(MODEL.format(residual=residual), 2, 64))

        def run(name, residual, layout, overlap=True, across_tp=False):
            sets = [f"train.steps={args.steps}", "train.global_batch=8",
                    f"parallel.overlap_grad_reduce={str(overlap).lower()}"] + layout
            train = [loom, "train", f"{residual}.textproto", "--run-dir", name]
            for s in sets:
                train += ["--set", s]
            if across_tp:  # round-robin placement by hand: tp groups span the nodes
                cmd = ["mpirun", "-np", "4", "--allow-run-as-root", "--hostfile", hostfile,
                       "--map-by", "node", "--bind-to", "none", "-x", "OMP_WAIT_POLICY",
                       *train, "--allow-cross-node-tp"]
            else:
                cmd = train + ["--hostfile", hostfile]
            run_on_cluster(cluster_dir, cmd, name)
            results[name] = bench_common.step_medians(name, warmup=2)
            print(f"  {name}: {results[name][0]:.1f} ms/step, {results[name][1]:.1f} ms exposed",
                  flush=True)

        dp4 = ["parallel.dp=4", "train.micro_batch=2"]
        dp2tp2 = ["parallel.dp=2", "parallel.tp=2", "train.micro_batch=4"]
        run("dp4-overlap", "STANDARD", dp4, overlap=True)
        run("dp4-no-overlap", "STANDARD", dp4, overlap=False)
        run("tp-inside", "STANDARD", dp2tp2)
        run("tp-across", "STANDARD", dp2tp2, across_tp=True)
        run("tp-across-ladder", "LADDER", dp2tp2, across_tp=True)
    except bench_common.BenchError as e:
        sys.exit(f"multinode: {e}")
    finally:
        subprocess.run(["bash", cluster_sh, "down", cluster_dir], capture_output=True)
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)

    condition = (f"2 namespaced nodes × 2 ranks on {bench_common.cpu_description()}, inter-node "
                 f"link {args.rate} (tc tbf; no added delay: this kernel has no netem), 1 thread "
                 f"per rank, d_model 256, 4 layers, 8 sequences of 64 tokens per step, "
                 f"{args.steps} steps (medians after 2 warm-up steps)")
    lines = table(results, condition, args)
    print("\n".join(lines))
    if docs:
        bench_common.write_section(docs, "## Multi-node", lines,
                                   {"multinode.svg": chart(results, condition)})


ROWS = [("dp4-overlap", "dp 4 across nodes, reduction overlapped"),
        ("dp4-no-overlap", "dp 4 across nodes, reduction after backward"),
        ("tp-inside", "tp 2 inside nodes × dp 2 across"),
        ("tp-across", "tp 2 across nodes × dp 2 inside"),
        ("tp-across-ladder", "tp 2 across nodes × dp 2 inside, Ladder")]


def table(results, condition, args):
    r = {k: v[0] for k, v in results.items()}
    lines = ["## Multi-node", "",
             f"`{bench_common.rerun_command('multinode.py', args.write_docs)}` (root): {condition}.",
             "", "| run | ms/step | exposed comm ms | exposed share |", "|---|---|---|---|"]
    for key, label in ROWS:
        ms, comm = results[key]
        lines.append(f"| {label} | {ms:.1f} | {comm:.1f} | {comm / ms:.0%} |")
    lines += ["",
              f"- Overlap across nodes: the overlapped dp 4 step takes "
              f"{r['dp4-overlap'] / r['dp4-no-overlap']:.2f}× the non-overlapped one.",
              f"- Placement: tp across nodes takes {r['tp-across'] / r['tp-inside']:.2f}× the "
              f"step of tp inside nodes (why `loom train` refuses it without "
              f"`--allow-cross-node-tp`).",
              f"- Ladder Residual with tp across nodes: {r['tp-across-ladder'] / r['tp-across']:.2f}× "
              f"the standard residual's step.",
              "", "![multi-node step times](multinode.svg)", ""]
    return lines


def chart(results, condition):
    """Horizontal stacked bars (hand-written SVG): ms per step of each run, the exposed
    communication part in orange."""
    width, bar_h, left, right, top = 760, 26, 300, 70, 60
    height = top + len(ROWS) * (bar_h + 12) + 40
    peak = max(ms for ms, _ in results.values())
    scale = (width - left - right) / peak
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">'
           'Two nodes over a slow link: ms per step (median)</text>',
           f'<text x="{width / 2}" y="40" text-anchor="middle" font-size="10">'
           f'{html.escape(condition[:150])}</text>']
    for i, (key, label) in enumerate(ROWS):
        ms, comm = results[key]
        y = top + i * (bar_h + 12)
        out.append(f'<text x="{left - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">'
                   f'{html.escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{(ms - comm) * scale:.1f}" height="{bar_h}" '
                   'fill="#4c72b0"/>')
        out.append(f'<rect x="{left + (ms - comm) * scale:.1f}" y="{y}" '
                   f'width="{comm * scale:.1f}" height="{bar_h}" fill="#dd8452"/>')
        out.append(f'<text x="{left + ms * scale + 6:.1f}" y="{y + bar_h / 2 + 4}">{ms:.0f}</text>')
    y = height - 18
    out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="#4c72b0"/>'
               f'<text x="{left + 18}" y="{y}">rest of the step</text>'
               f'<rect x="{left + 150}" y="{y - 10}" width="12" height="12" fill="#dd8452"/>'
               f'<text x="{left + 168}" y="{y}">exposed communication</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
