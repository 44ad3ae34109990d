"""What the recursion-family tests share: running loom, token shards, loom eval's losses."""

import re
import subprocess

import numpy as np

failures = []


def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what)
    if not ok:
        failures.append(what)


def finish():
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


def run_loom(loom, *args, expect_ok=True):
    done = subprocess.run([loom, *args], capture_output=True, text=True, timeout=600)
    if expect_ok and done.returncode != 0:
        raise SystemExit(f"loom {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def write_shard(path, tokens):
    """An llm.c token shard: 256 int32 of header (magic, version, count), then uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, len(tokens)]
    with open(path, "wb") as f:
        f.write(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def eval_loss(loom, run_dir, shard, loops, batches=1):
    """loom eval's validation loss of run_dir's newest checkpoint at `loops` iterations."""
    out = run_loom(loom, "eval", run_dir, "--data", shard, "--loops", str(loops), "--batches",
                   str(batches)).stdout
    rows = [line.split() for line in out.splitlines() if re.match(rf"\s*{loops}\s+\d", line)]
    if not rows:
        raise SystemExit(f"no loss row for {loops} loops in loom eval's output:\n{out}")
    return float(rows[0][1])


def relative(a, b):
    return abs(a - b) / abs(b)
