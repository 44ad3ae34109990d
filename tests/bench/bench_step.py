#!/usr/bin/python3
"""Training step time, loom against PyTorch, on the same model, batch and thread count.

loom measures itself (`loom bench step CONFIG --steps N --json` prints one JSON line: the model
dict, micro-batch B, seq_len T, threads, median ms_per_step, tokens_per_s, flops_per_step,
gflops and sgemm_peak_gflops). This script then builds the same model in float32 PyTorch
(tests/torch_ref/loom_torch.py) and times full steps the way a PyTorch user would write them:
zero_grad, forward, loss, backward, clip_grad_norm_(1.0), AdamW step; 2 warm-up, median of N.

Both sides are timed in turn, never at once, so they do not share cores.

Usage:
    bench_step.py --loom build/loom --config configs/gpt2_small.textproto --steps 10
    bench_step.py --loom build/loom --config CONFIG --set train.batch=8 --json
    bench_step.py --torch-only --model-json model.json --batch 4 --seq-len 128 --threads 4
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch_ref"))
import loom_torch  # noqa: E402

WARMUP_STEPS = 2
MIN_TIMED_STEPS = 5
LOOM_KEYS = ("model", "batch", "seq_len", "threads", "ms_per_step", "tokens_per_s",
             "flops_per_step", "gflops", "sgemm_peak_gflops")


class BenchError(Exception):
    pass


def run_loom(loom, config, steps, settings, timeout_s):
    """Runs loom's own benchmark and returns its JSON record."""
    argv = [loom, "bench", "step", config, "--steps", str(steps), "--json"]
    for setting in settings:
        argv += ["--set", setting]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise BenchError(f"loom binary not found: {loom}")
    except subprocess.TimeoutExpired:
        raise BenchError(f"loom ran past {timeout_s} s: {' '.join(argv)}")
    if done.returncode != 0:
        raise BenchError(f"loom exited with status {done.returncode}: {' '.join(argv)}\n"
                         f"--- its stderr ---\n{done.stderr.rstrip()}\n--- end of stderr ---")
    # The record is the one JSON line; anything else loom says on stdout is ignored.
    lines = [line for line in done.stdout.splitlines() if line.lstrip().startswith("{")]
    if len(lines) != 1:
        raise BenchError(f"expected one JSON line from loom, got {len(lines)}:\n{done.stdout}")
    record = json.loads(lines[0])
    missing = [key for key in LOOM_KEYS if key not in record]
    if missing:
        raise BenchError(f"loom's JSON record lacks {missing}: {lines[0]}")
    return record


def estimate_flops_per_step(model, batch, seq_len):
    """Matmul FLOPs of one training step (3x forward), full T x T attention, no causal halving.

    Only used with --torch-only; with loom, loom's own flops_per_step is used for both sides so
    the two GFLOP/s figures share a numerator.
    """
    B, T, C, F, V = batch, seq_len, model["d_model"], model["d_mlp"], model["vocab_size"]
    layers = model["prelude_layers"] + model["block_layers"] * model["loops"] + model["coda_layers"]
    per_layer = 2 * B * T * (3 * C * C + C * C + 2 * C * F) + 2 * 2 * B * T * T * C
    forward = layers * per_layer + 2 * B * T * C * V
    return 3 * forward


def time_torch_steps(model_dict, batch, seq_len, threads, steps, seed=0):
    """Seconds per training step for each of `steps` timed steps, after the warm-up."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(seed)
    model = loom_torch.LoomModel(model_dict, dtype=torch.float32)
    loom_torch.init_normal(model, std=0.02, generator=generator)
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    # foreach left at its default, as a user would (in torch 1.13 that is the per-tensor loop).
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1},
                                   {"params": vectors, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    tokens = torch.randint(0, model_dict["vocab_size"], (batch, seq_len + 1), generator=generator)
    inputs, targets = tokens[:, :seq_len], tokens[:, 1:]

    seconds = []
    for step in range(WARMUP_STEPS + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step >= WARMUP_STEPS:
            seconds.append(elapsed)
    return seconds


def torch_record(model_dict, batch, seq_len, threads, steps, flops_per_step):
    seconds = statistics.median(time_torch_steps(model_dict, batch, seq_len, threads, steps))
    return {
        "ms_per_step": seconds * 1e3,
        "tokens_per_s": batch * seq_len / seconds,
        "flops_per_step": flops_per_step,
        "gflops": flops_per_step / seconds / 1e9,
        "threads": threads,
    }


def print_table(result):
    loom, torch_side = result.get("loom"), result["torch"]
    print(f"model: {json.dumps(result['model'], sort_keys=True)}")
    print(f"B={result['batch']} T={result['seq_len']} threads={result['threads']} "
          f"steps={result['steps']} (median after {WARMUP_STEPS} warm-up)")
    print(f"{'':<14}{'loom':>14}{'PyTorch':>14}")
    for key, label, fmt in (("ms_per_step", "ms/step", "{:14.2f}"),
                            ("tokens_per_s", "tokens/s", "{:14.1f}"),
                            ("gflops", "GFLOP/s", "{:14.2f}")):
        loom_cell = fmt.format(loom[key]) if loom else f"{'-':>14}"
        print(f"{label:<14}{loom_cell}{fmt.format(torch_side[key])}")
    if loom:
        print(f"loom/PyTorch tokens/s ratio: {result['ratio_loom_over_torch']:.3f}")
        print(f"loom at {result['loom_percent_of_sgemm_peak']:.1f}% of its sgemm peak "
              f"({loom['sgemm_peak_gflops']:.1f} GFLOP/s on 2048^3)")
    else:
        print("PyTorch GFLOP/s uses an estimated FLOP count (matmuls only, full attention square)")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loom", help="loom binary")
    parser.add_argument("--config", help="loom config (textproto)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to loom as --set; repeatable")
    parser.add_argument("--threads", type=int,
                        help="PyTorch threads (default: the count loom reports, or torch's default)")
    parser.add_argument("--steps", type=int, default=10, help=f"timed steps, >= {MIN_TIMED_STEPS}")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds loom may run")
    parser.add_argument("--torch-only", action="store_true", help="time PyTorch alone, no loom")
    parser.add_argument("--model-json", help="model dict for --torch-only")
    parser.add_argument("--batch", type=int, help="micro-batch for --torch-only")
    parser.add_argument("--seq-len", type=int, help="sequence length for --torch-only")
    args = parser.parse_args(argv)
    if args.steps < MIN_TIMED_STEPS:
        parser.error(f"--steps must be >= {MIN_TIMED_STEPS}")
    if args.torch_only:
        if not (args.model_json and args.batch and args.seq_len):
            parser.error("--torch-only needs --model-json, --batch and --seq-len")
    elif not (args.loom and args.config):
        parser.error("give --loom and --config, or --torch-only")
    for setting in args.set:
        if "=" not in setting:
            parser.error(f"--set {setting!r} is not KEY=VALUE")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.torch_only:
            with open(args.model_json) as file:
                model_dict = json.load(file)
            loom = None
            batch, seq_len = args.batch, args.seq_len
            threads = args.threads or torch.get_num_threads()
            flops_per_step = estimate_flops_per_step(model_dict, batch, seq_len)
        else:
            loom = run_loom(args.loom, args.config, args.steps, args.set, args.timeout)
            model_dict, batch, seq_len = loom["model"], loom["batch"], loom["seq_len"]
            threads = args.threads or loom["threads"]
            if threads != loom["threads"]:
                print(f"warning: PyTorch gets {threads} threads but loom ran with {loom['threads']}; "
                      f"the ratio compares unequal machines", file=sys.stderr)
            flops_per_step = loom["flops_per_step"]
        loom_torch.validate_model_dict(model_dict)
    except (BenchError, ValueError, OSError) as error:
        print(f"bench ERROR: {error}", file=sys.stderr)
        return 2

    result = {"model": model_dict, "batch": batch, "seq_len": seq_len, "threads": threads,
              "steps": args.steps, "loom": loom,
              "torch": torch_record(model_dict, batch, seq_len, threads, args.steps, flops_per_step)}
    if loom:
        result["ratio_loom_over_torch"] = loom["tokens_per_s"] / result["torch"]["tokens_per_s"]
        result["loom_percent_of_sgemm_peak"] = 100.0 * loom["gflops"] / loom["sgemm_peak_gflops"]
    print_table(result)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
