#!/usr/bin/env python3
"""Byte-level against SentencePiece tokens on the default looped model, for the same wall-clock
budget as ./run.sh's training.

Prepares the Python standard library's sources (as ./run.sh does) three ways: bytes, and
SentencePiece BPE with 4096 and 8192 pieces (`loom prepare --tokenizer sentencepiece`). Trains
configs/default.textproto on each (model.vocab_size set to the data's) for the time the byte-level
run of --steps steps takes (each subword run first times 20 steps to choose its step count),
and prints the validation loss in bits per byte of text (so byte and subword runs compare
fairly), tokens/s, bytes of text per second, and the end-of-run sample of each. With
--write-docs it writes its section of docs/benchmarks.md.

usage: tokenizers.py LOOM SOURCE [--steps 300] [--write-docs FILE]
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402

SECTION = "## Tokenizers: bytes against SentencePiece in the same time"
KINDS = [("bytes", None), ("SentencePiece 4k", 4096), ("SentencePiece 8k", 8192)]


def prepare(loom, out, vocab):
    inputs = [a for d in sorted(glob.glob("/usr/lib/python3.[0-9]*")) for a in ("--input", d)]
    cmd = [loom, "prepare", *inputs, "--ext", ".py", "--output", out, "--val-fraction", "0.05"]
    if vocab:
        cmd += ["--tokenizer", "sentencepiece", "--vocab-size", str(vocab)]
    bench_common.run_command(cmd, f"loom prepare ({out})")
    text = open(os.path.join(out, "data.textproto")).read()
    return {k: int(re.search(rf"{k}: (\d+)", text).group(1))
            for k in ("vocab_size", "train_tokens", "train_bytes")}


def train(loom, data, info, steps, run_dir):
    sets = [f"model.vocab_size={info['vocab_size']}", f"train.steps={steps}",
            f"data.train_shards={data}/train_*.bin", f"data.val_shards={data}/val_*.bin",
            "train.eval_interval=100", "checkpoint.interval=0"]
    bench_common.train(loom, os.path.join(os.environ["LOOM_SRC"], "configs/default.textproto"),
                       run_dir, sets, timeout=3600)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    log = open(os.path.join(run_dir, "train.log")).read()
    sample = log.split("sample:\n", 1)[1].split("\ndone:", 1)[0] if "sample:\n" in log else ""
    return rows, sample


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loom")
    ap.add_argument("source")
    ap.add_argument("--steps", type=int, default=300, help="the byte-level run's steps")
    ap.add_argument("--write-docs", default="")
    args = ap.parse_args()
    loom, source = os.path.abspath(args.loom), os.path.abspath(args.source)
    os.environ["LOOM_SRC"] = source
    docs = os.path.abspath(args.write_docs) if args.write_docs else ""
    bench_common.exit_on_sigterm()
    work = tempfile.mkdtemp(prefix="loom-tokbench-")
    os.chdir(work)
    results = []
    try:
        budget_ms = None
        for name, vocab in KINDS:
            data = f"data-{vocab or 'bytes'}"
            info = prepare(loom, data, vocab)
            steps = args.steps
            if budget_ms is not None:
                rows, _ = train(loom, data, info, 20, f"probe-{vocab}")
                ms = sorted(r["ms_per_step"] for r in rows[2:])[len(rows[2:]) // 2]
                steps = max(20, int(budget_ms / ms))
            rows, sample = train(loom, data, info, steps, f"run-{vocab or 'bytes'}")
            spent = sum(r["ms_per_step"] for r in rows)
            if budget_ms is None:
                budget_ms = spent
            last = rows[-1]
            tokens_per_s = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
            bytes_per_token = info["train_bytes"] / info["train_tokens"]
            results.append({"name": name, "vocab": info["vocab_size"], "steps": steps,
                            "seconds": spent / 1000, "val_loss": last["val_loss"],
                            "val_bpb": last["val_bpb"], "tokens_per_s": tokens_per_s,
                            "bytes_per_s": tokens_per_s * bytes_per_token,
                            "bytes_per_token": bytes_per_token, "sample": sample})
            r = results[-1]
            print(f"{name}: {steps} steps in {r['seconds']:.0f} s, val_bpb {r['val_bpb']:.3f} "
                  f"(val_loss {r['val_loss']:.3f} nats/token), {tokens_per_s:.0f} tokens/s = "
                  f"{r['bytes_per_s']:.0f} bytes/s")
        if docs:
            write_docs(docs, results, args)
    except bench_common.BenchError as e:
        sys.exit(f"tokenizers: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_docs(docs, results, args):
    command = "python3 tests/bench/tokenizers.py build/loom ." + (
        f" --steps {args.steps}" if args.steps != 300 else "")
    lines = [SECTION, "",
             f"Measured on {bench_common.cpu_description()} with `{command}`: "
             "configs/default.textproto (the looped model of ./run.sh, T 128 tokens, micro-batch "
             "16) on the Python standard library's sources, each tokenizer trained for the "
             "wall-clock time the byte-level run takes. Bits per byte = validation loss · tokens "
             "/ (bytes · ln 2), over the same held-out files.", "",
             "| tokens | vocabulary | bytes per token | steps | training s | val bits per byte | tokens/s | bytes of text/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['vocab']} | {r['bytes_per_token']:.2f} | {r['steps']} | "
                     f"{r['seconds']:.0f} | **{r['val_bpb']:.3f}** | {r['tokens_per_s']:.0f} | "
                     f"{r['bytes_per_s']:.0f} |")
    lines += ["", "End-of-run samples (prompt `def `, temperature 0.8, top-k 40):", ""]
    for r in results:
        lines += [f"{r['name']}:", "", "```", r["sample"].strip("\n")[:600], "```", ""]
    bench_common.replace_section(docs, SECTION, lines)


if __name__ == "__main__":
    main()
