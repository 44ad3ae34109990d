"""Watching a run (docs/architecture.md, "Watching a run"): a small looped model trained at
dp 2 × tp 2 × pp 2 (8 ranks) with recomputation, at tp 2 × sp 2 with the Ladder and SQRT
recomputation, and on one process.

Checks, from metrics.jsonl alone:
- model_flops is the step's model FLOPs computed here from the config (Megatron's convention:
  3 × forward matmuls and attention over all T keys, the LM head, per token, times the step's
  tokens), independently of loom's own formula;
- tflops_per_rank = model_flops ÷ step time ÷ ranks, mfu = that ÷ peak_tflops, hfu the same for
  hardware_flops;
- hardware_flops exceeds model_flops exactly when train.recompute runs layers again, by as much
  at tp 2 × sp 2 as on one process;
- runtime.peak_tflops replaces the measured peak.

And logging.tensorboard's event files, read back with a reader written here from the format's
description (TFRecord framing with masked CRC-32C, Event and Summary messages decoded from the
protobuf wire format): every scalar equals metrics.jsonl's value (to float32), every step
appears once, also after --resume from an earlier checkpoint (the old file is cut after it, the
resumed run writes a new one).

And logging.loop_stats: every step's loop_rms, loop_change and loop_grad_norm at dp 2 × tp 2 ×
pp 2 (also after the resume) and at tp 2 × sp 2 equal the single process's to 1e-4 relative; `loom plot --loops`
draws a cell per iteration, step and statistic.

And `loom plot`: the SVG parses as XML and has one line per run and metric and a legend entry per
run, against step, tokens and time; a run whose metrics.jsonl ends in a line still being written
plots; a metric no run has is refused naming the ones there are; both kinds of chart have what
docs/ charts must (title, hardware line from the runs' train.log, axis labels).

usage: watch_run.py LOOM_BINARY SOURCE_DIR
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from check_charts import missing  # noqa: E402
from equivalence_common import prepare_data, sets  # noqa: E402

LOOM, SRC = sys.argv[1], sys.argv[2]
MODEL = dict(vocab_size=257, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64, prelude_layers=1,
             block_layers=1, loops=3, coda_layers=1)
SEQ_LEN, GLOBAL_BATCH = 32, 8
CONFIG = f"""
model {{ {' '.join(f'{k}: {v}' for k, v in MODEL.items())} max_seq_len: {SEQ_LEN} }}
train {{ global_batch: {GLOBAL_BATCH} micro_batch: 2 seq_len: {SEQ_LEN} steps: 4 eval_interval: 0 }}
data {{ train_shards: "data/train_*.bin" val_shards: "data/val_*.bin" }}
checkpoint {{ interval: 2 keep_last: 0 }}
logging {{ interval: 1 sample_tokens: 0 loop_stats: true }}
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


def train(name, overrides, ranks, resume=False):
    cmd = [LOOM, "train", "watch.textproto", "--run-dir", name, *sets(overrides)]
    if resume:
        cmd.append("--resume")
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600,
                          env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    if proc.returncode != 0:
        sys.exit(f"FAIL: {name}: exit {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                 f"{proc.stderr[-2000:]}")
    with open(os.path.join(name, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f if '"loss"' in line]
    count = 6 if resume else 4
    check(len(steps) == count, f"{name}: {count} steps in metrics.jsonl (got {len(steps)})")
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


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def wire_fields(data):
    """(field number, wire type, value) of a protobuf message: varints as ints, 64- and 32-bit
    fields as bytes, length-delimited ones as bytes."""
    at = 0

    def varint():
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value
    while at < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            yield field, wire, data[at:at + 8]
            at += 8
        elif wire == 5:
            yield field, wire, data[at:at + 4]
            at += 4
        elif wire == 2:
            n = varint()
            yield field, wire, data[at:at + n]
            at += n
        else:
            raise ValueError(f"wire type {wire}")


def read_events(path):
    """Each record's event as a dict: wall_time, step, file_version, scalars {tag: value}."""
    with open(path, "rb") as f:
        data = f.read()
    events, at = [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        payload = data[at + 12:at + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if header_crc != masked(header) or payload_crc != masked(payload):
            raise ValueError(f"{path}: a checksum fails at byte {at}")
        event = {"step": 0, "scalars": {}}
        for field, _, value in wire_fields(payload):
            if field == 1:
                event["wall_time"] = struct.unpack("<d", value)[0]
            elif field == 2:
                event["step"] = value
            elif field == 3:
                event["file_version"] = value.decode()
            elif field == 5:
                for f5, _, v in wire_fields(value):
                    assert f5 == 1
                    parts = {f: x for f, _, x in wire_fields(v)}
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        events.append(event)
        at += 16 + length
    return events


def metric_value(step, tag):
    if "/" in tag:
        key, part = tag.split("/")
        value = step.get(key)
        return None if value is None else value[int(part) if isinstance(value, list) else part]
    return step.get(tag)


def check_events(name, run_dir, steps, files):
    paths = sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*")))
    check(len(paths) == files, f"{name}: {len(paths)} event file(s) (expected {files})")
    seen, worst, compared = {}, 0.0, 0
    for path in paths:
        events = read_events(path)
        check(events[0].get("file_version") == "brain.Event:2" and events[0]["wall_time"] > 1.6e9,
              f"{name}: {os.path.basename(path)} starts with the file version")
        for e in events[1:]:
            seen[e["step"]] = seen.get(e["step"], 0) + 1
            step = next((s for s in steps if s["step"] == e["step"]), None)
            for tag, value in e["scalars"].items():
                want = metric_value(step, tag) if step else None
                if want is None:
                    check(False, f"{name}: step {e['step']}: {tag} is not in metrics.jsonl")
                    continue
                want32 = struct.unpack("<f", struct.pack("<f", want))[0]
                worst = max(worst, abs(value - want32) / max(abs(want32), 1e-30))
                compared += 1
    check(sorted(seen) == [s["step"] for s in steps] and set(seen.values()) == {1},
          f"{name}: every step once in the event files ({sorted(seen.items())})")
    for key in ("loss", "lr", "grad_norm", "mfu", "tokens_per_s"):
        check(all(key in e["scalars"] for p in paths for e in read_events(p)[1:]),
              f"{name}: every event has {key}")
    # metrics.jsonl holds 8 significant digits, the event the float32 of the whole value: they
    # agree to the float32's last bit (2⁻²³ relative) at most.
    check(worst <= 2 ** -22 and compared > 0,
          f"{name}: {compared} scalars equal metrics.jsonl's as float32 (worst {worst:.2e})")


def plot(args):
    return subprocess.run([LOOM, "plot", *args], capture_output=True, text=True, errors="replace")


def check_plot(runs):
    svg_ns = "{http://www.w3.org/2000/svg}"
    for axis in ("step", "tokens", "time"):
        out = f"runs-{axis}.svg"
        done = plot([*runs, "--svg", out, "--x", axis, "--metrics", "loss,mfu,val_loss"])
        if done.returncode != 0:
            check(False, f"loom plot --x {axis}: exit {done.returncode}: {done.stderr.strip()}")
            continue
        root = ElementTree.parse(out).getroot()
        series = [(e.get("data-run"), e.get("data-metric")) for e in root.iter(f"{svg_ns}polyline")
                  if e.get("class") == "series"]
        legend = [g for g in root.iter(f"{svg_ns}g") if g.get("class") == "legend"]
        with_val = sum(1 for r in runs if any("val_loss" in s for s in steps_of(r)))
        check(len(series) == len(set(series)) == 2 * len(runs) + with_val and
              len(legend) == len(runs),
              f"loom plot --x {axis}: {len(series)} lines (one per run and metric), "
              f"{len(legend)} legend entries for {len(runs)} runs")
        lacks = missing(out)
        check(not lacks, f"loom plot --x {axis}: a chart docs/ accepts (lacks: {lacks})")
    # A run still training: its last line is being written.
    shutil.copytree(runs[0], "training", ignore=shutil.ignore_patterns("checkpoints"))
    with open(os.path.join("training", "metrics.jsonl"), "a") as f:
        f.write('{"step":99,"loops":3,"loss":4.1')
    done = plot(["training", "--svg", "training.svg"])
    check(done.returncode == 0, f"a run still writing metrics.jsonl plots: {done.stderr.strip()}")
    done = plot([runs[0], "--svg", "bad.svg", "--metrics", "lsos"])
    check(done.returncode == 1 and 'no run has "lsos"' in done.stderr and "loss" in done.stderr,
          f"an unknown metric is refused: {done.stderr.strip()}")


def check_loop_stats(name, steps, reference):
    ref = {s["step"]: s for s in reference}
    worst, compared = 0.0, 0
    for s in steps:
        if s["step"] not in ref:
            continue
        for key in ("loop_rms", "loop_change", "loop_grad_norm"):
            a, b = s.get(key), ref[s["step"]].get(key)
            if a is None or b is None or len(a) != MODEL["loops"] or len(a) != len(b):
                check(False, f"{name} step {s['step']}: {key} {a} against {b}")
                return
            for x, y in zip(a, b):
                worst = max(worst, abs(x - y) / abs(y))
                compared += 1
    check(compared > 0 and worst <= 1e-4,
          f"{name}: {compared} loop statistics equal one process's (worst relative {worst:.1e})")


def check_loop_plot(run_dir, steps):
    done = plot(["--loops", run_dir, "--svg", "loops.svg"])
    if done.returncode != 0:
        check(False, f"loom plot --loops: exit {done.returncode}: {done.stderr.strip()}")
        return
    root = ElementTree.parse("loops.svg").getroot()
    cells = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "cell"]
    expected = 3 * MODEL["loops"] * len(steps)
    check(len(cells) == expected, f"loom plot --loops: {len(cells)} cells (3 statistics × "
                                  f"{MODEL['loops']} iterations × {len(steps)} steps: {expected})")
    lacks = missing("loops.svg")
    check(not lacks, f"loom plot --loops: a chart docs/ accepts (lacks: {lacks})")
    done = plot(["--loops", run_dir, "single", "--svg", "two.svg"])
    check(done.returncode == 1 and "one RUN_DIR" in done.stderr,
          f"loom plot --loops of two runs is refused: {done.stderr.strip()}")


def steps_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def main():
    os.chdir(tempfile.mkdtemp(prefix="loom-watch-"))
    prepare_data(LOOM, SRC)
    with open("watch.textproto", "w") as f:
        f.write(CONFIG)
    layout = ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2"]
    steps, _ = train("ranks8", layout + ["train.recompute=LOOP_BOUNDARY",
                                         "logging.tensorboard=true", "train.eval_interval=2",
                                         "train.eval_batches=1"], 8)
    check_utilisation("dp2·tp2·pp2, LOOP_BOUNDARY", steps, 8, True)
    check_events("dp2·tp2·pp2", "ranks8", steps, 1)
    check(any("val_loss" in s and "rank_busy_ms_max" in s for s in steps),
          "the 8-rank run has validation and rank health to compare")
    # Resumed from step 2 after step 4 (its checkpoint lost): steps 3 and 4 are written again,
    # once, in a new file.
    shutil.rmtree(os.path.join("ranks8", "checkpoints", "step_0000004"))
    steps, out = train("ranks8", layout + ["train.recompute=LOOP_BOUNDARY", "train.steps=6",
                                           "logging.tensorboard=true", "train.eval_interval=2",
                                           "train.eval_batches=1"], 8,
                       resume=True)
    check("resumed from" in out and "at step 2" in out, "the run resumed at step 2")
    check_events("dp2·tp2·pp2 resumed at step 2", "ranks8", steps, 2)
    steps, out = train("single", ["runtime.peak_tflops=0.5"], 1)
    check_utilisation("one process, peak_tflops 0.5", steps, 1, False, peak=0.5)
    check_loop_stats("dp2·tp2·pp2 (resumed at step 2)", steps_of("ranks8"), steps)
    check_loop_plot("ranks8", steps_of("ranks8"))
    check("MFU" in out and "runtime.peak_tflops" in out,
          "the progress line shows MFU and the log names the peak's source")
    # The recomputed FLOPs are the same whichever ranks split the layers and the sequence.
    recompute = ["train.recompute=SQRT", "model.residual=LADDER"]
    single, _ = train("single-sqrt", recompute, 1)
    check_utilisation("one process, SQRT, Ladder", single, 1, True)
    split, _ = train("tp2-sp2-sqrt", recompute + ["parallel.tp=2", "parallel.sp=2"], 4)
    check_utilisation("tp2·sp2, SQRT, Ladder", split, 4, True)
    check_loop_stats("tp2·sp2, SQRT, Ladder", split, single)
    check(all(close(a["hardware_flops"], b["hardware_flops"], 1e-9) for a, b in zip(single, split)),
          f"hardware_flops at tp2·sp2 {split[0]['hardware_flops']:.8g} equal one process's "
          f"{single[0]['hardware_flops']:.8g}")
    check_plot(["ranks8", "single", "tp2-sp2-sqrt"])
    if failures:
        sys.exit(f"{len(failures)} failure(s)")
    print("all checks passed")


if __name__ == "__main__":
    main()
