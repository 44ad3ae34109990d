"""Watching a run (docs/architecture.md, "Utilisation"): a small looped model trained at
dp 2 × tp 2 × pp 2 (8 ranks) with recomputation, at tp 2 × sp 2 and on one process.

Checks, from metrics.jsonl alone:
- model_flops is the step's model FLOPs computed here from the config (Megatron's convention:
  3 × forward matmuls and attention over all T keys, the LM head, per token, times the step's
  tokens), independently of loom's own formula;
- tflops_per_rank = model_flops ÷ step time ÷ ranks, mfu = that ÷ peak_tflops, hfu the same for
  hardware_flops;
- hardware_flops exceeds model_flops exactly when train.recompute runs layers again, by as much
  at tp 2 × sp 2 as on one process;
- runtime.peak_tflops replaces the measured peak.

usage: watch_run.py LOOM_BINARY SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
from equivalence_common import prepare_data, sets  # noqa: E402

LOOM, SRC = sys.argv[1], sys.argv[2]
MODEL = dict(vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64, prelude_layers=1,
             block_layers=1, loops=3, coda_layers=1)
SEQ_LEN, GLOBAL_BATCH = 32, 8
CONFIG = f"""
model {{ {' '.join(f'{k}: {v}' for k, v in MODEL.items())} max_seq_len: {SEQ_LEN} }}
train {{ global_batch: {GLOBAL_BATCH} micro_batch: 2 seq_len: {SEQ_LEN} steps: 4 eval_interval: 0 }}
data {{ train_shards: "data/train_*.bin" val_shards: "" }}
checkpoint {{ interval: 0 }}
logging {{ interval: 1 sample_tokens: 0 }}
runtime {{ threads: 1 }}
"""
failures = []


def check(ok, what):
    print(f"{'ok' if ok else 'FAIL'}: {what}")
    if not ok:
        failures.append(what)


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b))


def model_flops_per_step():
    """Megatron's model FLOPs of one step, from the config."""
    C, F, V, T = MODEL["d_model"], MODEL["d_mlp"], MODEL["vocab_size"], SEQ_LEN
    c_kv = MODEL["n_kv_heads"] * C // MODEL["n_heads"]
    matmuls = 2 * ((C + 2 * c_kv) * C + C * C + F * C + F * C)  # qkv, projection, fc, fc2
    attention = 2 * 2 * C * T  # q·kᵀ and p·v over all T keys
    layers = MODEL["prelude_layers"] + MODEL["block_layers"] * MODEL["loops"] + MODEL["coda_layers"]
    forward = layers * (matmuls + attention) + 2 * C * V
    return 3 * forward * GLOBAL_BATCH * SEQ_LEN


def train(name, overrides, ranks):
    cmd = [LOOM, "train", "watch.textproto", "--run-dir", name, *sets(overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600,
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    if proc.returncode != 0:
        sys.exit(f"FAIL: {name}: exit {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                 f"{proc.stderr[-2000:]}")
    with open(os.path.join(name, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if '"loss"' in line]
    check(len(steps) == 4, f"{name}: 4 steps in metrics.jsonl (got {len(steps)})")
    return steps, proc.stdout


def check_utilisation(name, steps, ranks, recomputes, peak=None):
    expected = model_flops_per_step()
    for s in steps:
        where = f"{name} step {s['step']}"
        check(close(s["model_flops"], expected),
              f"{where}: model_flops {s['model_flops']:.6g} (computed here: {expected:.6g})")
        per_rank = s["model_flops"] / (s["ms_per_step"] / 1e3) / ranks / 1e12
        check(close(s["tflops_per_rank"], per_rank, 1e-5),
              f"{where}: tflops_per_rank {s['tflops_per_rank']:.6g} = FLOPs ÷ time ÷ ranks "
              f"{per_rank:.6g}")
        check(close(s["mfu"], per_rank / s["peak_tflops"], 1e-5),
              f"{where}: mfu {s['mfu']:.6g} = that ÷ peak {s['peak_tflops']:.6g}")
        hfu = s["hardware_flops"] / (s["ms_per_step"] / 1e3) / ranks / 1e12 / s["peak_tflops"]
        check(close(s["hfu"], hfu, 1e-5), f"{where}: hfu {s['hfu']:.6g} = {hfu:.6g}")
        more = s["hardware_flops"] > s["model_flops"] * (1 + 1e-9)
        check(more == recomputes and s["hardware_flops"] >= s["model_flops"],
              f"{where}: hardware_flops {s['hardware_flops']:.6g} "
              f"{'>' if recomputes else '='} model_flops")
        if peak is not None:
            check(s["peak_tflops"] == peak, f"{where}: peak_tflops {s['peak_tflops']} = {peak}")
        else:
            check(s["peak_tflops"] > 0, f"{where}: a measured peak ({s['peak_tflops']} TFLOP/s)")


def main():
    os.chdir(tempfile.mkdtemp(prefix="loom-watch-"))
    prepare_data(LOOM, SRC)
    with open("watch.textproto", "w") as f:
        f.write(CONFIG)
    layout = ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2"]
    steps, _ = train("ranks8", layout + ["train.recompute=LOOP_BOUNDARY"], 8)
    check_utilisation("dp2·tp2·pp2, LOOP_BOUNDARY", steps, 8, True)
    steps, out = train("single", ["runtime.peak_tflops=0.5"], 1)
    check_utilisation("one process, peak_tflops 0.5", steps, 1, False, peak=0.5)
    check("MFU" in out and "runtime.peak_tflops" in out,
          "the progress line shows MFU and the log names the peak's source")
    # The recomputed FLOPs are the same whichever ranks split the layers and the sequence.
    recompute = ["train.recompute=SQRT"]
    single, _ = train("single-sqrt", recompute, 1)
    check_utilisation("one process, SQRT", single, 1, True)
    split, _ = train("tp2-sp2-sqrt", recompute + ["parallel.tp=2", "parallel.sp=2"], 4)
    check_utilisation("tp2·sp2, SQRT", split, 4, True)
    check(all(close(a["hardware_flops"], b["hardware_flops"], 1e-9) for a, b in zip(single, split)),
          f"hardware_flops at tp2·sp2 {split[0]['hardware_flops']:.8g} equal one process's "
          f"{single[0]['hardware_flops']:.8g}")
    if failures:
        sys.exit(f"{len(failures)} failure(s)")
    print("all checks passed")


if __name__ == "__main__":
    main()
