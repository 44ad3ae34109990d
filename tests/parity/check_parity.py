#!/usr/bin/python3
"""Parity test: loom's losses and step-0 gradients against the float64 PyTorch reference.

Runs loom's dump tool (`TOOL CONFIG --out DIR`), replays the same training run in float64 with
tests/torch_ref/loom_torch.py, and compares:
  * the loss at every step:               |loom - ref| / |ref|                      <= tol
  * every gradient at step 0 (unclipped): ||loom - ref|| / max(||ref||, 1e-12)    <= tol
The loss is the mean cross-entropy; the gradients are those of the trained objective, which
with a recursion router (Mixture-of-Recursions) adds the router's auxiliary term to it.
Parameter names and shapes must agree exactly, in init.safetensors and grads0.safetensors.
Exit status 0 = pass, 1 = a comparison failed, 2 = the dump could not be produced or read.

Usage:
    check_parity.py --dump-tool build/loom_parity_dump --config configs/parity.textproto
    check_parity.py --dump-dir /tmp/dump          # re-check a dump kept with --keep
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch_ref"))
import loom_torch  # noqa: E402

# Denominator floor for relative errors, so an all-zero reference gradient does not divide by 0.
RELATIVE_FLOOR = 1e-12
TRAIN_KEYS = ("batch", "seq_len", "steps", "lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip")


class DumpError(Exception):
    """The dump tool failed or its output is malformed: not a parity failure, a broken run."""


def run_dump_tool(tool, config, out_dir, timeout_s):
    argv = [tool, config, "--out", out_dir]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise DumpError(f"dump tool not found: {tool}")
    except subprocess.TimeoutExpired:
        raise DumpError(f"dump tool ran past {timeout_s} s: {' '.join(argv)}")
    if done.returncode != 0:
        raise DumpError(f"dump tool exited with status {done.returncode}: {' '.join(argv)}\n"
                        f"--- its stderr ---\n{done.stderr.rstrip()}\n--- end of stderr ---")


def read_losses(path, steps):
    with open(path) as file:
        lines = [line.split() for line in file if line.strip()]
    if len(lines) != steps:
        raise DumpError(f"{path}: {len(lines)} losses for {steps} steps")
    # The last field, so a "step loss" layout reads the same as a bare "loss" one.
    return [float(fields[-1]) for fields in lines]


def read_dump(dump_dir):
    """Returns (model, train, init, tokens (S, B, T+1) int64, grads0, losses) from a dump dir."""
    def path(name):
        full = os.path.join(dump_dir, name)
        if not os.path.isfile(full):
            raise DumpError(f"dump is missing {name} (looked in {dump_dir})")
        return full

    try:
        with open(path("model.json")) as file:
            model = json.load(file)
        with open(path("train.json")) as file:
            train = json.load(file)
    except json.JSONDecodeError as error:
        raise DumpError(f"bad JSON in {dump_dir}: {error}")
    try:
        loom_torch.validate_model_dict(model)
    except ValueError as error:
        raise DumpError(f"model.json: {error}")
    missing = [key for key in TRAIN_KEYS if key not in train]
    if missing:
        raise DumpError(f"train.json is missing keys {missing}")
    S, B, T = train["steps"], train["batch"], train["seq_len"]
    if S < 1 or B < 1 or T < 1:
        raise DumpError(f"train.json: steps={S} batch={B} seq_len={T}; all must be >= 1")
    if len(train["lr"]) != S:
        raise DumpError(f"train.json: {len(train['lr'])} learning rates for {S} steps")

    tokens = np.fromfile(path("tokens.bin"), dtype="<i4")
    if tokens.size != S * B * (T + 1):
        raise DumpError(f"tokens.bin holds {tokens.size} int32, expected S*B*(T+1) = {S}*{B}*{T + 1}")
    tokens = tokens.reshape(S, B, T + 1).astype(np.int64)
    if tokens.min() < 0 or tokens.max() >= model["vocab_size"]:
        raise DumpError(f"tokens.bin has ids in [{tokens.min()}, {tokens.max()}], "
                        f"outside vocab_size {model['vocab_size']}")
    try:
        init = loom_torch.load_safetensors(path("init.safetensors"))
        grads0 = loom_torch.load_safetensors(path("grads0.safetensors"))
    except (ValueError, KeyError) as error:
        raise DumpError(f"unreadable safetensors in {dump_dir}: {error}")
    losses = read_losses(path("losses.txt"), S)
    return model, train, init, tokens, grads0, losses


def make_adamw(model, train):
    """AdamW with decay only on matrices (ndim >= 2), as loom does."""
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": train["weight_decay"]},
              {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train["lr"][0], betas=(train["beta1"], train["beta2"]),
                             eps=train["eps"], foreach=False)


def reference_run(model_dict, train, init, tokens, dtype=torch.float64):
    """Replays the training run. Returns (losses, step-0 gradients by loom name)."""
    model = loom_torch.LoomModel(model_dict, dtype=dtype)
    loom_torch.load_loom_weights(model, init)
    optimizer = make_adamw(model, train)
    T = train["seq_len"]
    losses, grads0 = [], None
    for step in range(train["steps"]):
        batch = torch.from_numpy(tokens[step])
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(batch[:, :T], batch[:, 1:])
        # The reported loss is the cross-entropy alone; the gradient is that of the whole
        # objective, which adds the Mixture-of-Recursions router's auxiliary term (0 without).
        (loss + model.aux_loss).backward()
        losses.append(loss.item())
        if step == 0:
            grads0 = loom_torch.loom_gradients(model)
        if train["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        for group in optimizer.param_groups:
            group["lr"] = train["lr"][step]
        optimizer.step()
    return losses, grads0


def relative_error(loom, ref):
    return abs(loom - ref) / max(abs(ref), RELATIVE_FLOOR)


def compare(loom_losses, ref_losses, loom_grads, ref_grads, tol):
    """Returns rows (kind, name, detail, rel_err, ok) for every compared quantity."""
    rows = []
    for step, (loom, ref) in enumerate(zip(loom_losses, ref_losses)):
        err = relative_error(loom, ref)
        # ok is `err <= tol`, never `not err > tol`, so a NaN from either side fails.
        rows.append(("loss", f"step {step}", f"loom {loom:.9g}  ref {ref:.9g}", err, err <= tol))
    for name in sorted(ref_grads):
        ref = ref_grads[name].astype(np.float64)
        loom = loom_grads[name].astype(np.float64)
        ref_norm = float(np.linalg.norm(ref))
        diff_norm = float(np.linalg.norm(loom - ref))
        err = diff_norm / max(ref_norm, RELATIVE_FLOOR)
        rows.append(("grad", name, f"|ref| {ref_norm:.4g}  |loom-ref| {diff_norm:.4g}", err, err <= tol))
    return rows


def print_rows(rows, tol):
    if not rows:
        return
    width = max(len(name) for _, name, _, _, _ in rows)
    for kind, name, detail, err, ok in rows:
        print(f"  {'ok  ' if ok else 'FAIL'}  {kind:<4}  {name:<{width}}  rel err {err:.3e}  (tol {tol:.0e})  {detail}")


def summarise(rows, tol):
    def worst(kind):
        chosen = [row for row in rows if row[0] == kind]
        if not chosen:
            return "none checked"
        # NaN sorts as worst: it is the failure that most needs reporting.
        row = max(chosen, key=lambda r: float("inf") if np.isnan(r[3]) else r[3])
        return f"worst {row[3]:.3e} at {row[1]} ({len(chosen)} checked)"
    failures = sum(1 for row in rows if not row[4])
    verdict = "PASS" if failures == 0 else f"FAIL ({failures} of {len(rows)} over tol {tol:.0e})"
    print(f"parity {verdict}: losses {worst('loss')}; gradients {worst('grad')}")


def check(dump_dir, tol, verbose, min_steps):
    model_dict, train, init, tokens, loom_grads, loom_losses = read_dump(dump_dir)
    if train["steps"] < min_steps:
        raise DumpError(f"the dump has {train['steps']} steps, fewer than --min-steps {min_steps} "
                        f"(the parity requirement includes the loss at step 20)")
    # Names and shapes come first: a missing tensor would make every later number meaningless.
    expected = loom_torch.parameter_shapes(loom_torch.LoomModel(model_dict, dtype=torch.float32))
    problems = []
    for what, tensors in (("init.safetensors", init), ("grads0.safetensors", loom_grads)):
        problems += loom_torch.name_shape_problems(
            expected, {name: array.shape for name, array in tensors.items()}, what)
    if problems:
        for problem in problems:
            print(f"  FAIL  {problem}")
        print(f"parity FAIL: {len(problems)} parameter name/shape mismatches between loom and the reference")
        return 1

    print(f"model {json.dumps(model_dict, sort_keys=True)}")
    print(f"train B={train['batch']} T={train['seq_len']} steps={train['steps']} "
          f"grad_clip={train['grad_clip']} weight_decay={train['weight_decay']}")
    ref_losses, ref_grads = reference_run(model_dict, train, init, tokens)
    rows = compare(loom_losses, ref_losses, loom_grads, ref_grads, tol)
    print_rows(rows if verbose else [row for row in rows if not row[4]], tol)
    summarise(rows, tol)
    return 0 if all(row[4] for row in rows) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dump-tool", help="loom's parity dump executable")
    source.add_argument("--dump-dir", help="check an existing dump instead of running the tool")
    parser.add_argument("--config", help="config passed to the dump tool (required with --dump-tool)")
    parser.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    parser.add_argument("--min-steps", type=int, default=21,
                        help="fail unless the dump has at least this many steps (default 21: step 20 is required)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the dump tool may run")
    parser.add_argument("--keep", action="store_true", help="keep the dump directory and print its path")
    parser.add_argument("--verbose", action="store_true", help="print every comparison, not only failures")
    args = parser.parse_args(argv)
    if args.dump_tool and not args.config:
        parser.error("--dump-tool needs --config")

    dump_dir = args.dump_dir
    owned_dir = None
    try:
        if args.dump_tool:
            owned_dir = tempfile.mkdtemp(prefix="loom_parity_")
            dump_dir = owned_dir
            run_dump_tool(args.dump_tool, args.config, dump_dir, args.timeout)
        return check(dump_dir, args.tol, args.verbose, args.min_steps)
    except DumpError as error:
        print(f"parity ERROR: {error}", file=sys.stderr)
        return 2
    finally:
        if owned_dir and args.keep:
            print(f"dump kept in {owned_dir}")
        elif owned_dir:
            shutil.rmtree(owned_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
