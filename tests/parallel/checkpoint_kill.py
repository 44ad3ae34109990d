"""Sharded checkpoints survive kill -9: two-rank jobs (tp = 2, and dp = 2 with ZeRO-1) that
checkpoint every step, synchronously and in the background, are killed at random moments, one
rank (SIGKILL to rank 1) or the whole job (SIGKILL to every process of it at once: loom,
mpirun and the ranks, as a power cut would), KILL_TRIALS times each (default 20).
After every kill no process of the job is left; then --resume finishes the run, and its final
checkpoint (every tensor's parameters and moments, assembled from the pieces) equals the
uninterrupted run's bit for bit.

usage: checkpoint_kill.py LOOM_BINARY SOURCE_DIR
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import checkpoint_tensors, prepare_data, sets  # noqa: E402

LOOM, SRC = sys.argv[1], sys.argv[2]
TRIALS = int(os.environ.get("KILL_TRIALS", "20"))
STEPS = 24
CONFIG = f"""
model {{ vocab_size: 257 d_model: 128 n_heads: 4 d_mlp: 512 max_seq_len: 32 prelude_layers: 1
        block_layers: 2 loops: 2 coda_layers: 1 input_injection: true }}
train {{ global_batch: 4 micro_batch: 2 seq_len: 32 steps: {STEPS} eval_interval: 0 shuffle: true }}
optim {{ lr: 3e-3 warmup_steps: 2 }}
data {{ train_shards: "data/train_*.bin" val_shards: "data/val_*.bin" }}
checkpoint {{ interval: 1 keep_last: 2 }}
logging {{ interval: 1 sample_tokens: 0 }}
runtime {{ threads: 1 }}
parallel {{ collective_timeout_s: 20 }}
"""
LAYOUTS = {"tp2": ["parallel.tp=2"], "dp2-zero": ["parallel.dp=2", "parallel.zero_stage=1"]}
failures = []
mid_write = []  # trials whose kill left a checkpoint half written


def job_processes(run_dir):
    """Pids of processes whose command line names run_dir (loom, mpirun, the ranks), with the
    rank each one is (None for loom and mpirun)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if run_dir.encode() not in cmd:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited, not yet reaped
        except OSError:
            continue
        rank = env.get(b"OMPI_COMM_WORLD_RANK")
        out[int(pid)] = int(rank) if rank is not None else None
    return out


def train(run_dir, layout, background, resume=False):
    cmd = [LOOM, "train", "kill.textproto", "--run-dir", run_dir, *sets(LAYOUTS[layout]),
           *sets([f"checkpoint.async={'true' if background else 'false'}"])]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env)


def final_tensors(run_dir):
    return checkpoint_tensors(os.path.join(run_dir, "checkpoints", f"step_{STEPS:07d}"))


def trial(name, layout, background, whole_job, reference, seconds):
    run_dir = f"kill-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    job = train(run_dir, layout, background)
    time.sleep(random.uniform(0.2, seconds))
    for pid, rank in job_processes(run_dir).items():
        if whole_job or rank == 1:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        job.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        failures.append(f"{name}: the job did not end within 60 s of the kill")
        job.kill()
        return
    deadline = time.time() + 15
    while job_processes(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    left = job_processes(run_dir)
    if left:
        failures.append(f"{name}: processes left behind after the kill: {sorted(left)}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    folder = os.path.join(run_dir, "checkpoints")
    listing = os.listdir(folder) if os.path.isdir(folder) else []
    saved = sorted(d for d in listing if d.startswith("step_"))
    if any(d.startswith(".tmp-") for d in listing):
        mid_write.append(name)
    if not saved:
        print(f"ok: {name}: killed before the first checkpoint")
        return
    if saved[-1] != f"step_{STEPS:07d}":
        resumed = train(run_dir, layout, background, resume=True)
        out, _ = resumed.communicate(timeout=120)
        if resumed.returncode != 0:
            failures.append(f"{name}: resume from {saved[-1]} failed:\n{out[-1500:]}")
            return
    got = final_tensors(run_dir)
    same = all(got[k] == reference[k] for k in reference)
    print(f"{'ok' if same else 'FAIL'}: {name}: killed with {saved[-1]} the newest checkpoint; "
          f"resumed, the final checkpoint {'equals' if same else 'differs from'} the uninterrupted run's")
    if not same:
        failures.append(f"{name}: resumed run's final checkpoint differs")


def export_matches(layout):
    """`loom export` and `loom sample` read a sharded checkpoint: the exported safetensors hold
    the tensors the pieces assemble to."""
    checkpoint = os.path.join(f"ref-{layout}", "checkpoints", f"step_{STEPS:07d}")
    for cmd in ([LOOM, "export", checkpoint, "--safetensors", f"{layout}.safetensors"],
                [LOOM, "sample", checkpoint, "--tokens", "4"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            failures.append(f"{' '.join(cmd[1:3])} of a {layout} checkpoint failed: {proc.stderr[-500:]}")
            return
    with open(f"{layout}.safetensors", "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        data = f.read()
    exported = b"".join(data[header[n]["data_offsets"][0]:header[n]["data_offsets"][1]]
                        for n in sorted(k for k in header if k != "__metadata__"))
    same = exported == checkpoint_tensors(checkpoint)["params"].tobytes()
    print(f"{'ok' if same else 'FAIL'}: loom export of the {layout} checkpoint "
          f"{'holds' if same else 'differs from'} its pieces' tensors; loom sample reads it")
    if not same:
        failures.append(f"export of the {layout} checkpoint differs from its pieces")


def main():
    work = tempfile.mkdtemp(prefix="loom-kill-")
    os.chdir(work)
    prepare_data(LOOM, SRC)
    with open("kill.textproto", "w") as f:
        f.write(CONFIG)
    rng_seed = int(os.environ.get("KILL_SEED", str(int(time.time()))))
    random.seed(rng_seed)
    print(f"random kill moments from seed {rng_seed} (KILL_SEED to repeat)")
    references, durations = {}, {}
    for layout in LAYOUTS:
        start = time.time()
        job = train(f"ref-{layout}", layout, False)
        out, _ = job.communicate(timeout=300)
        if job.returncode != 0:
            failures.append(f"reference {layout} failed:\n{out[-2000:]}")
            continue
        durations[layout] = time.time() - start
        references[layout] = final_tensors(f"ref-{layout}")
        export_matches(layout)
    for whole_job in (False, True):
        for i in range(TRIALS if references else 0):
            layout = list(references)[i % len(references)]
            background = (i // len(references)) % 2 == 1
            name = (f"{'job' if whole_job else 'rank 1'} killed #{i + 1} {layout}"
                    f"{' async' if background else ''}").replace(" ", "-")
            trial(name, layout, background, whole_job, references[layout], durations[layout])
    if failures:
        print("\n".join(["FAILURES:"] + failures))
        sys.exit(1)
    shutil.rmtree(work)
    print(f"{2 * TRIALS} kill trials ({len(mid_write)} of them in the middle of a checkpoint write): "
          "every newest checkpoint resumed bit-exactly, nothing left behind")


if __name__ == "__main__":
    main()
