"""Automatic restarts (loom train --max-restarts): a job whose rank is killed mid-run, or during a
checkpoint write, is started again from its newest checkpoint and finishes; its final checkpoint
(every tensor's parameters and Adam moments) equals an uninterrupted run's bit for bit, and
train.log and metrics.jsonl record each restart with its cause. A single process killed by
SIGKILL is restarted the same way. An error a rank reports (here: no data) is not retried.

usage: restart_test.py LOOM_BINARY SOURCE_DIR
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import checkpoint_tensors, prepare_data, sets  # noqa: E402

LOOM, SRC = sys.argv[1], sys.argv[2]
STEPS = 16
CONFIG = f"""
model {{ vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 block_layers: 1
        loops: 2 coda_layers: 1 }}
train {{ global_batch: 4 micro_batch: 2 seq_len: 32 steps: {STEPS} eval_interval: 0 shuffle: true }}
optim {{ lr: 3e-3 warmup_steps: 2 }}
data {{ train_shards: "data/train_*.bin" val_shards: "" }}
checkpoint {{ interval: 1 keep_last: 3 async: false }}
logging {{ interval: 1000 sample_tokens: 0 }}
runtime {{ threads: 1 }}
parallel {{ collective_timeout_s: 20 }}
"""
DP2 = ["parallel.dp=2"]
PP2_DP2_ZERO = ["parallel.dp=2", "parallel.pp=2", "parallel.zero_stage=1", "train.micro_batch=1"]
failures = []


def train(run_dir, layout, *extra, fault=None, background=False):
    cmd = [LOOM, "train", "restart.textproto", "--run-dir", run_dir, *sets(layout), *extra]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("LOOM_FAULT", None)
    if fault:
        env["LOOM_FAULT"] = fault
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env)
    if background:
        return proc
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def final_tensors(run_dir):
    return checkpoint_tensors(os.path.join(run_dir, "checkpoints", f"step_{STEPS:07d}"))


def check_restarted(name, run_dir, rc, out, reference, restarts=1):
    if rc != 0:
        failures.append(f"{name}: exit status {rc}:\n{out[-2000:]}")
        return
    with open(os.path.join(run_dir, "train.log")) as f:
        log = f.read()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    logged = log.count("automatic restart ")
    recorded = [r for r in rows if "restart" in r]
    steps = [r["step"] for r in rows if "loss" in r]
    problems = []
    if logged < 2 * restarts:  # the launcher's line and the resumed run's
        problems.append(f"train.log names {logged // 2} restart(s), expected {restarts}")
    if len(recorded) != restarts or not all(r.get("cause") for r in recorded):
        problems.append(f"metrics.jsonl records {recorded}, expected {restarts} restart(s) with a cause")
    if steps != list(range(1, STEPS + 1)):
        problems.append(f"metrics.jsonl holds steps {steps}, expected 1..{STEPS} once each")
    got = final_tensors(run_dir)
    if any(got[k] != reference[k] for k in reference):
        problems.append("its final checkpoint differs from the uninterrupted run's")
    if problems:
        failures.append(f"{name}: " + "; ".join(problems))
    else:
        print(f"ok: {name}: restarted ({recorded[0]['cause']}), finished, final checkpoint equals "
              "the uninterrupted run's bit for bit")


def checkpoint_write_fault():
    """A LOOM_FAULT that kills rank 1 while a checkpoint is being written: the world operation
    whose kill leaves a checkpoint's temporary folder behind (found by trying, so that it does
    not depend on how many operations a step and a checkpoint take)."""
    for op in range(12, 60):
        fault = f"rank=1,group=world,op={op},action=kill"
        run_dir = f"probe-{op}"
        rc, out = train(run_dir, DP2, fault=fault)
        listing = os.listdir(os.path.join(run_dir, "checkpoints"))
        shutil.rmtree(run_dir, ignore_errors=True)
        if rc != 0 and any(d.startswith(".tmp-") for d in listing):
            return fault
    return None


def main():
    os.chdir(tempfile.mkdtemp())
    prepare_data(LOOM, SRC)
    with open("restart.textproto", "w") as f:
        f.write(CONFIG)
    rc, out = train("ref-dp2", DP2)
    rc1, out1 = train("ref-1", [])
    rcz, outz = train("ref-pp2-zero", PP2_DP2_ZERO)
    if rc != 0 or rc1 != 0 or rcz != 0:
        sys.exit(f"FAIL: the uninterrupted runs failed:\n{out[-1500:]}\n{out1[-1500:]}\n"
                 f"{outz[-1500:]}")
    reference = final_tensors("ref-dp2")

    # A rank killed by LOOM_FAULT mid-run (its 30th gradient all-reduce, about step 10); also at
    # pp 2 x dp 2 with ZeRO-1, whose checkpoints equalise the shared block's moments shard by
    # shard across the stages.
    rc, out = train("fault", DP2, "--max-restarts", "2",
                    fault="rank=1,group=dp_sp,op=30,action=kill")
    check_restarted("rank killed mid-run", "fault", rc, out, reference)
    rc, out = train("fault-pp2-zero", PP2_DP2_ZERO, "--max-restarts", "2",
                    fault="rank=3,group=dp_sp,op=30,action=kill")
    check_restarted("rank killed mid-run, pp 2 x dp 2 with ZeRO-1", "fault-pp2-zero", rc, out,
                    final_tensors("ref-pp2-zero"))

    # A rank killed during a checkpoint write (its folder not yet published).
    fault = checkpoint_write_fault()
    if fault is None:
        failures.append("no LOOM_FAULT op of group world killed rank 1 during a checkpoint write")
    else:
        rc, out = train("mid-write", DP2, "--set", "train.max_restarts=1", fault=fault)
        check_restarted("rank killed during a checkpoint write", "mid-write", rc, out, reference)

    # A single process killed by SIGKILL: loom train watches it and restarts it.
    job = train("single", [], "--max-restarts", "1", background=True)
    child = None
    for _ in range(600):
        time.sleep(0.05)
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        metrics = os.path.join("single", "metrics.jsonl")
        if children.stdout.strip() and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            child = int(children.stdout.split()[0])
            break
    if child is None:
        failures.append("single process: no training child process found")
        job.kill()
    else:
        os.kill(child, signal.SIGKILL)
        out, _ = job.communicate(timeout=300)
        check_restarted("single process killed", "single", job.returncode, out,
                        final_tensors("ref-1"))

    # An error a rank reports is not retried.
    rc, out = train("no-data", DP2, "--set", "data.train_shards=nothing/*.bin", "--max-restarts", "3")
    if rc != 1 or "automatic restart" in out or "nothing/*.bin" not in out:
        failures.append(f"no data: exit {rc}, expected 1 without a restart:\n{out[-1500:]}")
    else:
        print("ok: a rank's error (no data) ends the job with status 1, not retried")

    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print("restart tests passed")


main()
