"""Shared pieces of the layout-equivalence tests (dp_equivalence.py, tp_equivalence.py): running
loom under mpirun, reading metrics.jsonl, and comparing losses step by step against the
single-process run.

Each test takes `LOOM SRC [--device DEVICE]`: with --device every run of it (the single-process
reference and every layout) sets runtime.device, and the reference is also checked against the
CPU's: the emulated device runs the CPU's kernels in the same order, so its losses are the same
bits."""
import array
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

TOLERANCE = 1e-5
CHECKPOINT_TOLERANCE = 1e-4
failures = []
DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else None


def mpirun(ranks):
    cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def run(cmd, name):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, timeout=300)
    if proc.returncode != 0:
        failures.append(f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return False
    return True


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def compare(name, reference, got, first_step=1, tolerance=TOLERANCE):
    ref = {m["step"]: m for m in reference}
    if [m["step"] for m in got] != list(range(first_step, len(reference) + 1)):
        failures.append(f"{name}: steps {[m['step'] for m in got]}")
        return
    worst = 0.0
    for m in got:
        for key in ("loss", "val_loss"):
            if key in ref[m["step"]]:
                a, b = ref[m["step"]][key], m.get(key)
                if b is None:
                    failures.append(f"{name}: step {m['step']} lacks {key}")
                    return
                worst = max(worst, abs(a - b) / abs(a))
    status = "ok" if worst <= tolerance else "FAIL"
    print(f"{status}: {name}: worst relative loss difference {worst:.2e} over {len(got)} steps")
    if worst > tolerance:
        failures.append(f"{name}: relative loss difference {worst:.3e} > {tolerance}")


def prepare_data(loom, src):
    subprocess.run([loom, "prepare", "--input", os.path.join(src, "core"), "--input",
                    os.path.join(src, "kernels"), "--output", "data", "--val-fraction", "0.2"],
                   check=True, capture_output=True)


def training_config(global_batch, eval_batches):
    """The training part of an equivalence run's config (the model section comes first): 6 steps
    of micro-batches of 2 × 32 tokens with shuffling, validation and a checkpoint every 3 steps."""
    return f"""
train {{ global_batch: {global_batch} micro_batch: 2 seq_len: 32 steps: 6 eval_interval: 3 eval_batches: {eval_batches} shuffle: true }}
optim {{ lr: 3e-3 warmup_steps: 2 }}
data {{ train_shards: "data/train_*.bin" val_shards: "data/val_*.bin" }}
checkpoint {{ interval: 3 }}
logging {{ interval: 1 sample_tokens: 0 }}
runtime {{ threads: 1{f" device: {DEVICE}" if DEVICE else ""} }}
"""


def reference_run(loom, name, config_text):
    """Writes NAME.textproto and trains it in one process; returns (config path, its metrics),
    or (config path, None) when the run failed (recorded in failures)."""
    config = f"{name}.textproto"
    with open(config, "w") as f:
        f.write(config_text)
    ref_dir = f"ref-{name}"
    if not run([loom, "train", config, "--run-dir", ref_dir], f"{name} single"):
        return config, None
    if DEVICE:
        cpu_dir = f"ref-{name}-cpu"
        if run([loom, "train", config, "--run-dir", cpu_dir, "--set", "runtime.device=CPU"],
               f"{name} single on the CPU"):
            compare_bits(f"{name}: single process on {DEVICE} and on the CPU", ref_dir, cpu_dir)
    return config, metrics(ref_dir)


def compare_bits(name, run_a, run_b):
    """Two runs' losses, validation losses and gradient norms are the same bits at every step."""
    values = lambda d: [(m["loss"], m.get("val_loss"), m["grad_norm"]) for m in metrics(d)]  # noqa: E731
    same = values(run_a) == values(run_b)
    print(f"{'ok' if same else 'FAIL'}: {name}: "
          f"{'the same losses, bit for bit' if same else 'different losses'}")
    if not same:
        failures.append(f"{name}: the losses differ")


def resume_case(loom, config, run_dir, name, ranks, overrides, reference):
    """A copy of run_dir cut back to its step-3 checkpoint, resumed with `overrides` on `ranks`
    ranks, continues the reference run exactly (steps 4–6)."""
    resumed = f"{run_dir}-resumed-{'-'.join(o.replace('=', '') for o in overrides) or 'same'}"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "step_0000006"))
    cmd = [loom, "train", config, "--run-dir", resumed, "--resume", *sets(overrides)]
    if run((mpirun(ranks) if ranks > 1 else []) + cmd, name):
        compare(name, reference, metrics(resumed)[3:], first_step=4)


def checkpoint_tensors(checkpoint):
    """{"params" | "adam_m" | "adam_v": array of floats}: every tensor of a checkpoint folder
    assembled from its pieces (docs/checkpoint-format.md), tensors in name order, so that
    checkpoints of any two layouts compare element by element."""
    with open(os.path.join(checkpoint, "checkpoint.textproto")) as f:
        text = f.read()
    tensors = {"params": {}, "adam_m": {}, "adam_v": {}}
    for kind, body in re.findall(r"^(params|adam_m|adam_v) \{\n(.*?)^\}", text, re.M | re.S):
        fields = {}
        for key, value in re.findall(r"^\s*(\w+): (.*)$", body, re.M):
            fields.setdefault(key, []).append(value.strip('"'))
        shape, at, size = ([int(x) for x in fields[k]]
                           for k in ("global_shape", "shard_offset", "shard_shape"))
        if len(shape) == 1:
            shape, at, size = [1] + shape, [0] + at, [1] + size
        whole = tensors[kind].setdefault(fields["name"][0],
                                         array.array("f", bytes(4 * shape[0] * shape[1])))
        piece = array.array("f")
        with open(os.path.join(checkpoint, fields["file"][0]), "rb") as f:
            f.seek(int(fields["offset"][0]))
            piece.frombytes(f.read(4 * size[0] * size[1]))
        for r in range(size[0]):
            row = (at[0] + r) * shape[1] + at[1]
            whole[row:row + size[1]] = piece[r * size[1]:(r + 1) * size[1]]
    return {kind: array.array("f", b"".join(t[n].tobytes() for n in sorted(t)))
            for kind, t in tensors.items()}


def compare_checkpoints(name, ref_dir, run_dir):
    """The final checkpoint's global tensors (parameters and Adam moments, gathered from every
    rank's shards) equal the single-process run's within CHECKPOINT_TOLERANCE relative (norm of
    the difference). Looser than the losses': in AdamW's first steps v ≈ g², so an element whose
    gradient is near zero moves by ±lr whatever its size, and the rounding of a reordered sum
    (tensor-parallel partial sums, the vocabulary-parallel cross-entropy) decides its sign — a
    tp = 2 run's parameters differ from the single process's by up to about 1e-5 after six
    steps while its losses agree to 1e-7."""
    ref, got = (checkpoint_tensors(os.path.join(d, "checkpoints", "step_0000006"))
                for d in (ref_dir, run_dir))
    for file in ("params", "adam_m", "adam_v"):
        a, b = ref[file], got[file]
        if len(a) != len(b):
            failures.append(f"{name}: {file} has {len(b)} floats, the single process {len(a)}")
            continue
        diff = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
        rel = diff / max(math.sqrt(sum(x * x for x in a)), 1e-30)
        print(f"{'ok' if rel <= CHECKPOINT_TOLERANCE else 'FAIL'}: {name}: checkpoint {file} relative "
              f"difference {rel:.1e}")
        if rel > CHECKPOINT_TOLERANCE:
            failures.append(f"{name}: checkpoint {file} differs by {rel:.2e}")


def planned_activations(loom, config, overrides):
    """The activation MiB `loom plan` gives each stage of the layout (one figure with one)."""
    out = subprocess.run([loom, "plan", config, *sets(overrides)], capture_output=True,
                         text=True).stdout
    # The stage table's rows: stage, params, AdamW, activations, slots ("2 × 20.1"), ...
    planned = [float(x) for x in
               re.findall(r"^ +\d+ +[0-9.]+ +[0-9.]+ +([0-9.]+) +\d+ × [0-9.]+ ", out, re.M)]
    if not planned:  # one stage: the summary's figure
        planned = [float(x) for x in re.findall(r"^  activations +([0-9.]+) ", out, re.M)]
    return planned


def check_activation_memory(loom, name, config, run_dir, overrides):
    """The activation peak each rank measured (metrics.jsonl: the largest over ranks) is what
    `loom plan` says the largest stage (or rank) allocates."""
    planned = planned_activations(loom, config, overrides)
    measured = max(m["activation_peak_mib"] for m in metrics(run_dir))
    ok = bool(planned) and abs(max(planned) - measured) <= 0.006  # two decimals
    print(f"{'ok' if ok else 'FAIL'}: {name}: activation peak {measured:.2f} MiB measured, "
          f"{max(planned or [0]):.2f} MiB planned")
    if not ok:
        failures.append(f"{name}: activation peak {measured} MiB, plan {planned}")


def train_case(loom, model_name, config, reference, tag, ranks, overrides, checkpoint=False):
    """Trains `config` with `overrides` on `ranks` ranks in MODEL_NAME-TAG; compares its losses
    against the single process's, its measured activation peak against `loom plan`'s figure and,
    with `checkpoint`, its final checkpoint against the single process's. Returns the run
    folder."""
    run_dir = f"{model_name}-{tag}"
    name = f"{model_name} {' '.join(overrides)}"
    cmd = [loom, "train", config, "--run-dir", run_dir, *sets(overrides)]
    if run((mpirun(ranks) if ranks > 1 else []) + cmd, name):
        compare(name, reference, metrics(run_dir))
        check_activation_memory(loom, name, config, run_dir, overrides)
        if checkpoint:
            compare_checkpoints(name, f"ref-{model_name}", run_dir)
    return run_dir


def sample_text(run_dir):
    """The sample written at the end of a run (the text after "sample:" in train.log)."""
    with open(os.path.join(run_dir, "train.log")) as f:
        log = f.read()
    if "sample:\n" not in log:
        return None
    # up to the next line of the log, which starts with its timestamp
    return re.split(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", log.split("sample:\n", 1)[1], 1,
                    flags=re.M)[0]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def run_models(loom, src, prefix, models, common, cases):
    """In a temporary folder with data prepared from src: for each of `models` (name → model
    text), the single-process reference run of model + common, then cases(name, config,
    reference) — the layouts compared against it. Exits with the verdict."""
    work = tempfile.mkdtemp(prefix=prefix)
    os.chdir(work)
    try:
        prepare_data(loom, src)
        for model_name, model in models.items():
            config, reference = reference_run(loom, model_name, model + common)
            if reference is not None:
                cases(model_name, config, reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    finish()


def finish():
    for f in failures:
        print("FAIL:", f)
    raise SystemExit(1 if failures else 0)
