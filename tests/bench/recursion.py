#!/usr/bin/env python3
"""Recursion against depth: unshared, looped, relaxed (per-iteration LoRA) and converted models
trained on the same number of tokens.

Trains, one after another on byte-level Python source (SOURCE/data/pystdlib, which ./run.sh
prepares; prepared here when missing), the same global batch, sequence length, step count,
seed and learning-rate schedule for each of (d_model 128, 4 heads, d_mlp 512, no prelude or coda):
  plain 12      12 unshared layers
  plain 4       4 unshared layers (the looped models' unique layers)
  looped        4 layers × 3 loops (pure recursion)
  relaxed r     the same with model.loop_lora_rank r (--lora-ranks, default 8 and 32)
  mor           the same 4 × 3 with Mixture-of-Recursions' expert-choice router (iteration r
                keeps (3 − r)/3 of each sequence's tokens: all, 2/3, 1/3)
  converted     plain 12's checkpoint at half the steps, `loom convert --to-looped` into 4 × 3
                with --init average --lora-rank 8, trained for the other half (--init-from; a new
                warm-up and cosine over the half, and train.seed + 1 so that it reads other
                sequences than the first half did)
For each it reports the parameters and activation arena (`loom plan`), the final validation
loss and bits per byte (metrics.jsonl), the median training step, the training FLOPs per token
and the peak RSS (`loom bench step --json`); and the validation loss against loop count
(`loom eval --loops`) of the looped models (not of mor, whose router has a row per trained
iteration). With --write-docs it writes its section of
docs/benchmarks.md and a chart of the loss against loop count (docs/recursion.svg).

--results FILE keeps the measurements as JSON; --from-results FILE writes the docs from them
without training. --lr-check FILE quotes, in the docs, a run of plain 4 and looped alone at
another learning rate (`--models plain4,looped --lr 1e-3 --results FILE`).

usage: recursion.py LOOM SOURCE [--steps 600] [--lr 3e-3] [--eval-batches 8] [--lora-ranks 8,32]
                    [--models plain12,plain4,...] [--results FILE] [--from-results FILE]
                    [--lr-check FILE] [--write-docs FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Recursion: looped, relaxed and converted models against unshared ones"
MODEL = ("model {{ vocab_size: 257 d_model: 128 n_heads: 4 d_mlp: 512 max_seq_len: {T} "
         "prelude_layers: 0 block_layers: {K} loops: {R} coda_layers: 0 loop_lora_rank: {r} "
         "{extra}}}")
CONVERT_RANK = 8
LOOPED_EVAL = [1, 2, 3, 4, 6]  # pure recursion runs any count; relaxed at most model.loops
WARMUP_STEPS = 10              # steps left out of the median step time


def models(lora_ranks):
    """(key, label, block_layers, loops, loop_lora_rank, more model fields) of the models trained
    from scratch."""
    rows = [("plain12", "plain, 12 layers", 12, 1, 0, ""),
            ("plain4", "plain, 4 layers", 4, 1, 0, ""), ("looped", "looped, 4 × 3", 4, 3, 0, "")]
    rows += [(f"relaxed{r}", f"relaxed, 4 × 3, LoRA rank {r}", 4, 3, r, "") for r in lora_ranks]
    rows.append(("mor", "Mixture-of-Recursions, 4 × 3, expert choice", 4, 3, 0,
                 "recursion_router: EXPERT_CHOICE "))
    return rows


def data_dir(loom, source):
    """SOURCE/data/pystdlib, prepared as ./run.sh does when it is not there yet."""
    data = os.path.join(source, "data", "pystdlib")
    if not os.path.exists(os.path.join(data, "data.textproto")):
        inputs = [a for d in sorted(os.listdir("/usr/lib")) if re.fullmatch(r"python3\.\d+", d)
                  for a in ("--input", os.path.join("/usr/lib", d))]
        bench_common.run_command([loom, "prepare", *inputs, "--ext", ".py", "--output", data,
                                  "--val-fraction", "0.05"], "loom prepare")
    return data


def training_sets(args, data, steps, eval_interval):
    return [f"train.global_batch={args.batch}", f"train.steps={steps}",
            f"train.eval_interval={eval_interval}", f"train.eval_batches={args.eval_batches}",
            f"optim.lr={args.lr:g}", "optim.warmup_steps=30", "optim.lr_min_ratio=0.1",
            f"data.train_shards={data}/train_*.bin", f"data.val_shards={data}/val_*.bin",
            "runtime.threads=0", "logging.interval=50"]


def plan(loom, config):
    """(parameters, activation arena MiB) as `loom plan` prints them."""
    out = bench_common.run_command([loom, "plan", config], f"loom plan ({config})")
    return (int(re.search(r"^  model +(\d+) parameters", out, re.M).group(1)),
            float(re.search(r"^  activations +([0-9.]+) ", out, re.M).group(1)))


def bench_step(loom, config):
    out = bench_common.run_command([loom, "bench", "step", config, "--set", "runtime.threads=0",
                                    "--steps", "5", "--warmup", "1", "--json"],
                                   f"loom bench step ({config})")
    return json.loads(out.strip().splitlines()[-1])


def final_metrics(run_dir):
    """(final val_loss, val_bpb, median ms per step after the warm-up, [(step, loss)])."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last = [m for m in rows if "val_loss" in m][-1]
    return (last["val_loss"], last["val_bpb"],
            statistics.median(m["ms_per_step"] for m in rows[WARMUP_STEPS:]),
            [(m["step"], m["loss"]) for m in rows])


def loss_by_loops(loom, checkpoint, loops, batches):
    """{loop count: (val_loss, bpb)} from `loom eval`."""
    out = bench_common.run_command([loom, "eval", checkpoint, "--loops", ",".join(map(str, loops)),
                                    "--batches", str(batches)], f"loom eval ({checkpoint})")
    found = re.findall(r"^ +(\d+) +([0-9.]+) +([0-9.]+) +\d+ ", out, re.M)
    return {int(n): (float(loss), float(bpb)) for n, loss, bpb in found}


def measure_model(loom, args, data, key, label, K, R, r, extra, sets_extra=()):
    config = f"{key}.textproto"
    with open(config, "w") as f:
        f.write(bench_common.bench_config(MODEL.format(T=args.seq_len, K=K, R=R, r=r, extra=extra),
                                          args.batch, args.seq_len))
    params, arena = plan(loom, config)
    bench = bench_step(loom, config)
    start = time.time()
    bench_common.train(loom, config, key, training_sets(args, data, args.steps, args.steps)
                       + list(sets_extra))
    loss, bpb, ms, curve = final_metrics(key)
    row = {"key": key, "label": label, "params": params, "arena_mib": arena,
           "rss_mib": bench["max_rss_mib"], "bench_ms": bench["ms_per_step"],
           "flops_per_token": bench["flops_per_step"] / (bench["batch"] * bench["seq_len"]),
           "val_loss": loss, "val_bpb": bpb, "ms": ms, "curve": curve,
           "train_s": time.time() - start}
    print(f"{label}: {params} parameters, val_loss {loss:.4f} ({bpb:.3f} bits per byte), "
          f"{ms:.0f} ms/step, {row['flops_per_token'] / 1e6:.1f} MFLOP/token, arena "
          f"{arena:.1f} MiB, rss {row['rss_mib']:.0f} MiB, trained in {row['train_s']:.0f} s",
          flush=True)
    return row


def measure(loom, args, data):
    half = args.steps // 2
    rows = {}
    for key, label, K, R, r, extra in models(args.lora_ranks):
        if key not in args.models:
            continue
        # plain 12 also keeps its checkpoint at half the steps: the converted model's source.
        model_extra = extra
        extra = ([f"checkpoint.interval={half}", "checkpoint.keep_last=0"]
                 if key == "plain12" else [])
        rows[key] = measure_model(loom, args, data, key, label, K, R, r, model_extra, extra)
        if R > 1 and not model_extra:
            loops = LOOPED_EVAL if r == 0 else [n for n in LOOPED_EVAL if n <= R]
            rows[key]["by_loops"] = loss_by_loops(loom, key, loops, args.eval_batches)
            print(f"  by loops: {rows[key]['by_loops']}", flush=True)

    if "converted" not in args.models:
        return rows
    source = os.path.join("plain12", "checkpoints", f"step_{half:07d}")
    at_conversion = loss_by_loops(loom, source, [1], args.eval_batches)[1][0]
    bench_common.run_command(
        [loom, "convert", source, "--to-looped", "--prelude", "0", "--block-layers", "4",
         "--loops", "3", "--coda", "0", "--init", "average", "--lora-rank", str(CONVERT_RANK),
         "--output", "converted-init"], "loom convert")
    before = loss_by_loops(loom, "converted-init", [1, 2, 3], args.eval_batches)
    start = time.time()
    seed = int(re.search(r"^  seed: (\d+)", open("converted-init/config.textproto").read(),
                         re.M).group(1))
    bench_common.train(loom, "converted-init/config.textproto", "converted",
                       training_sets(args, data, args.steps - half, args.steps - half)
                       + [f"train.seed={seed + 1}", "checkpoint.interval=0"])
    loss, bpb, ms, curve = final_metrics("converted")
    relaxed = bench_step(loom, "converted-init/config.textproto")
    plain = rows["plain12"]
    rows["converted"] = {
        "key": "converted", "label": f"converted (plain 12 → 4 × 3, rank {CONVERT_RANK})",
        "params": relaxed["params"], "arena_mib": plan(loom, "converted-init/config.textproto")[1],
        "rss_mib": max(plain["rss_mib"], relaxed["max_rss_mib"]),
        "bench_ms": relaxed["ms_per_step"],
        # the first half's steps are plain 12's, the second half's the converted model's
        "flops_per_token": (half * plain["flops_per_token"] + (args.steps - half)
                            * relaxed["flops_per_step"] / (relaxed["batch"] * relaxed["seq_len"]))
        / args.steps,
        "val_loss": loss, "val_bpb": bpb, "ms": ms, "curve": curve, "half": half,
        "plain_at_conversion": at_conversion, "before_training": before,
        "by_loops": loss_by_loops(loom, "converted", [1, 2, 3], args.eval_batches),
        "train_s": plain["train_s"] * half / args.steps + time.time() - start}
    print(f"converted: plain 12 at step {half} {at_conversion:.4f}; after conversion "
          f"{before}; after {args.steps - half} more steps {loss:.4f} ({bpb:.3f} bits per byte), "
          f"{ms:.0f} ms/step", flush=True)
    return rows


COLOURS = {"plain12": "black", "plain4": "#888", "looped": "#4e79a7", "relaxed8": "#f28e2b",
           "relaxed32": "#59a14f", "converted": "#e15759", "converted-init": "#e15759",
           "mor": "#b07aa1"}


def short_label(key):
    """The chart's name for a model: "relaxed, rank 8" for relaxed8."""
    return {"plain12": "plain 12", "plain4": "plain 4", "converted-init": "converted, step 0"}.get(
        key, re.sub(r"^relaxed(\d+)$", r"relaxed, rank \1", key))


def spread(ys, gap):
    """The positions ys (sorted) moved apart to at least `gap` each, as little as they can."""
    ys = list(ys)
    for _ in range(100):
        moved = False
        for i in range(len(ys) - 1):
            overlap = gap - (ys[i + 1] - ys[i])
            if overlap > 0.01:
                ys[i] -= overlap / 2
                ys[i + 1] += overlap / 2
                moved = True
        if not moved:
            break
    return ys


def chart_svg(rows, args):
    """Validation loss against loop count, one line per looped model; the plain models' losses
    as horizontal dashed lines."""
    w, h, left, right, top, bottom = 620, 340, 60, 130, 20, 45
    lines = [(k, r["by_loops"]) for k, r in rows.items() if "by_loops" in r]
    lines.append(("converted-init", rows["converted"]["before_training"]))
    flat = [(k, rows[k]["val_loss"]) for k in ("plain12", "plain4")]
    values = [v[0] for _, by in lines for v in by.values()] + [v for _, v in flat]
    step = bench_common.tick_step(max(values) - min(values), 6)
    lo, hi = step * (min(values) // step), step * (max(values) // step + 1)
    counts = sorted({n for _, by in lines for n in by})
    X = lambda n: left + (w - left - right) * (n - 1) / (counts[-1] - 1)  # noqa: E731
    Y = lambda v: h - bottom - (h - top - bottom) * (v - lo) / (hi - lo)  # noqa: E731
    p = [bench_common.axis_label("y", "validation loss (nats per byte)", 14,
                                 (top + h - bottom) / 2, rotated=True)]
    for i in range(round((hi - lo) / step) + 1):
        y = Y(lo + i * step)
        p.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        p.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                 f'{lo + i * step:.2f}</text>')
    for n in counts:
        p.append(f'<text x="{X(n):.1f}" y="{h - bottom + 16}" text-anchor="middle">{n}</text>')
    p.append(f'<line x1="{X(3):.1f}" x2="{X(3):.1f}" y1="{top}" y2="{h - bottom}" stroke="#bbb" '
             'stroke-dasharray="2 3"/>')
    p.append(f'<text x="{X(3) + 4:.1f}" y="{top + 10}" fill="#888">trained at 3 loops</text>')
    p.append(bench_common.axis_label("x", "loop count at evaluation", (left + w - right) / 2,
                                     h - 8))
    labels = []
    for key, value in flat:
        p.append(f'<line x1="{left}" x2="{w - right}" y1="{Y(value):.1f}" y2="{Y(value):.1f}" '
                 f'stroke="{COLOURS[key]}" stroke-dasharray="6 4"/>')
        labels.append((Y(value), key))
    for key, by in lines:
        colour = COLOURS.get(key, "#777")
        pts = [(X(n), Y(by[n][0])) for n in sorted(by)]
        dash = ' stroke-dasharray="3 3"' if key == "converted-init" else ""
        p.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}" fill="none" '
                 f'stroke="{colour}" stroke-width="2"{dash}/>')
        for x, y in pts:
            fill = "white" if key == "converted-init" else colour
            p.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{fill}" stroke="{colour}"/>')
        labels.append((pts[-1][1], key))
    # Each name in the right margin beside its line's end, moved apart to stay readable.
    labels.sort()
    for (_, key), y in zip(labels, spread([y for y, _ in labels], 13)):
        p.append(f'<text x="{w - right + 6}" y="{y + 4:.1f}" fill="{COLOURS.get(key, "#777")}">'
                 f'{short_label(key)}</text>')
    # The runs use runtime.threads 0: a thread per core.
    return bench_common.chart_svg(
        w, h, p, "Validation loss against loop count: looped, relaxed and converted models",
        bench_common.hardware_line(1, os.cpu_count()),
        f"d_model 128, 4 unique layers looped 3 times in training (relaxed: LoRA deltas per "
        f"loop); {args.steps} steps of {args.batch} × {args.seq_len} bytes of Python source; "
        f"loss over {args.eval_batches} validation batches (loom eval --loops); dashed: the "
        "unshared models, open circles: the converted model before its training", font_size=11)


def below(a, b):
    """Where loss a ends against loss b, in words."""
    return "below" if a < b else "above"


def sci(x):
    """3e-3 for 0.003."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def reading(rows, args, lr_check):
    """The paragraph that says what the figures show, each claim from the figures."""
    p12, p4, looped = (rows[k]["val_loss"] for k in ("plain12", "plain4", "looped"))
    conv, by = rows["converted"], rows["looped"]["by_loops"]
    relaxed = {int(k[7:]): r for k, r in rows.items() if k.startswith("relaxed")}
    text = "Reading: " + (f"at {args.steps} steps depth has not paid yet (plain 12 ends above "
                          "plain 4), and " if p12 > p4 else "")
    text += (f"the pure looped model ends {below(looped, p4)} plain 4, whose parameters it has, "
             f"and {below(looped, p12)} plain 12, whose FLOPs it spends")
    if 6 in by:
        trend = "rises" if by[6][0] > by[3][0] else "falls"
        text += (f"; past its 3 trained loops its loss {trend} ({by[3][0]:.3f} → "
                 f"{by[6][0]:.3f} at 6)")
    closed = [100 * (looped - r["val_loss"]) / (looped - p12) for r in relaxed.values()]
    text += (". Relaxed recursion closes " + " and ".join(
        f"{c:.0f} % (rank {rank})" for c, rank in zip(closed, relaxed)) + " of its gap to plain 12"
        + ("; Bae et al. (2024) report that the deltas recover most of the unshared model's "
           "quality, which does not reproduce at this scale. " if max(closed) < 50 else ". "))
    if "mor" in rows:
        mor, lp = rows["mor"], rows["looped"]
        text += (f"Mixture-of-Recursions (expert choice: its 3 iterations run 100 %, 67 % and 33 % "
                 f"of the tokens) spends {100 * mor['flops_per_token'] / lp['flops_per_token']:.0f}"
                 f" % of the looped model's FLOPs per token and "
                 f"{100 * mor['ms'] / lp['ms']:.0f} % of its step time, and ends "
                 f"{below(mor['val_loss'], looped)} it ({mor['val_loss']:.3f} against "
                 f"{looped:.3f}) on the same tokens; Bae et al. (2025) report MoR below a looped "
                 "baseline at equal training FLOPs, which "
                 + ("holds here even at equal tokens. " if mor["val_loss"] < looped else
                    "this comparison at equal tokens neither shows nor rules out. "))
    base = relaxed[CONVERT_RANK]["val_loss"]
    at, init, end = conv["plain_at_conversion"], conv["before_training"][3][0], conv["val_loss"]
    text += (f"Conversion costs {init - at:.3f} nats at once; after {args.steps - conv['half']} "
             f"more steps the converted model ({end:.3f}) is {below(end, at)} its source at the "
             f"conversion point ({at:.3f}) and {below(end, base)} the same relaxed model trained "
             f"from scratch ({base:.3f}): conversion {'beats' if end < base else 'does not beat'} "
             "training from scratch here.")
    if lr_check:
        other = lr_check["rows"]
        l2, p2 = other["looped"]["val_loss"], other["plain4"]["val_loss"]
        text += (f" One learning rate for all, not tuned per model: at lr "
                 f"{sci(lr_check['args']['lr'])} (`{lr_check['command']}`) looped {l2:.3f} and "
                 f"plain 4 {p2:.3f}, a gap of {l2 - p2:.3f} nats instead of {looped - p4:.3f}.")
    return [text]


def write_docs(docs, rows, args, command, total_s, lr_check=None):
    conv = rows["converted"]
    half = conv["half"]
    lines = [SECTION, "",
             f"`{command}` on {bench_common.cpu_description()}, {os.cpu_count()} threads: "
             f"{args.steps} steps of {args.batch} × {args.seq_len} bytes (data/pystdlib) for "
             f"every model, the same seed and schedule (AdamW, lr {sci(args.lr)}, 30 warm-up "
             f"steps, cosine to {sci(args.lr / 10)}); d_model 128, 4 heads, d_mlp 512; "
             f"validation over {args.eval_batches} batches at the end; "
             f"{total_s / 60:.0f} min in all. FLOPs per token: `loom bench step --json`'s "
             "flops_per_step ÷ tokens (3 × forward); ms/step: median of training; arena: "
             "`loom plan`; RSS: `loom bench step`'s peak (with its sgemm test's buffers). One run "
             "per model.", "",
             "| model | parameters | val loss | bits per byte | ms/step | MFLOP/token | arena MiB "
             "| RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['val_loss']:.3f} | "
                     f"{r['val_bpb']:.3f} | {r['ms']:.0f} | {r['flops_per_token'] / 1e6:.1f} | "
                     f"{r['arena_mib']:.0f} | {r['rss_mib']:.0f} |")
    counts = sorted({n for r in rows.values() for n in r.get("by_loops", {})})
    depth = [(r["label"], r["by_loops"]) for r in rows.values() if "by_loops" in r]
    depth.insert(-1, ("converted, before training", conv["before_training"]))
    lines += ["", "Validation loss against the loop count at evaluation (`loom eval --loops`; "
              "relaxed models run at most the 3 loops they have deltas for):", "",
              "| model | " + " | ".join(f"{n} loop{'s' * (n > 1)}" for n in counts) + " |",
              "|---|" + "---:|" * len(counts)]
    for label, by in depth:
        lines.append(f"| {label} | " + " | ".join(f"{by[n][0]:.3f}" if n in by else "—"
                                                  for n in counts) + " |")
    lines += ["", f"Converted: its first {half} steps are plain 12's run (warm-up, then the first "
              f"half of its {args.steps}-step cosine), {conv['plain_at_conversion']:.3f} at step "
              f"{half}; right after `loom convert --init average --lora-rank {CONVERT_RANK}` "
              f"{conv['before_training'][3][0]:.3f}; then {args.steps - half} steps of `loom train "
              "--init-from` with a new warm-up and a cosine over those steps (train.seed + 1: "
              "other sequences than the first half's). Its ms/step is the second half's, its "
              "FLOPs per token the mean of both halves.", ""]
    lines += reading(rows, args, lr_check)
    lines += ["", "![validation loss against loop count](recursion.svg)", ""]
    bench_common.write_section(docs, SECTION, lines, {"recursion.svg": chart_svg(rows, args)})


def load_results(path):
    """What --results wrote, with the loop counts as numbers again."""
    with open(path) as f:
        saved = json.load(f)
    for r in saved["rows"].values():
        for field in ("by_loops", "before_training"):
            if field in r:
                r[field] = {int(n): v for n, v in r[field].items()}
    return saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every model")
    ap.add_argument("--batch", type=int, default=16, help="global batch = micro-batch")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--lora-ranks", default="8,32")
    ap.add_argument("--models", default="",
                    help="train only these (comma-separated keys: plain12, plain4, looped, "
                    "relaxed8 ..., converted, which needs plain12); default all; --write-docs "
                    "needs all")
    ap.add_argument("--results", default="", help="also write the measurements as JSON here")
    ap.add_argument("--from-results", default="",
                    help="measure nothing: write the docs from an earlier run's --results")
    ap.add_argument("--lr-check", default="",
                    help="--results of a run of plain4 and looped at another --lr, quoted in "
                    "the docs")
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    args.lora_ranks = [int(x) for x in args.lora_ranks.split(",")]
    every = [key for key, *_ in models(args.lora_ranks)] + ["converted"]
    args.models = args.models.split(",") if args.models else every
    if set(args.models) - set(every) or ("converted" in args.models
                                          and "plain12" not in args.models):
        ap.error(f"--models: choose among {','.join(every)}; converted needs plain12")
    if args.write_docs and args.models != every:
        ap.error("--write-docs needs every model (leave --models out)")
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    results = os.path.abspath(args.results) if args.results else ""
    bench_common.exit_on_sigterm()
    lr_check = load_results(args.lr_check) if args.lr_check else None
    if args.from_results:
        saved = load_results(args.from_results)
        vars(args).update(saved["args"])
        if docs:
            write_docs(docs, saved["rows"], args, saved["command"], saved["total_s"], lr_check)
        return
    work = tempfile.mkdtemp(prefix="loom-recursion-")
    start = time.time()
    try:
        data = data_dir(loom, source)
        os.chdir(work)
        rows = measure(loom, args, data)
        total_s = time.time() - start
        print(f"total {total_s / 60:.1f} min")
        command = re.sub(r" --(results|lr-check)[= ]\S+", "",
                         bench_common.rerun_command("recursion.py", args.write_docs))
        if results:
            kept = {k: getattr(args, k) for k in ("steps", "lr", "batch", "seq_len",
                                                  "eval_batches", "lora_ranks")}
            with open(results, "w") as f:
                json.dump({"rows": rows, "args": kept, "command": command, "total_s": total_s},
                          f, indent=1)
        if docs:
            write_docs(docs, rows, args, command, total_s, lr_check)
    except bench_common.BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
