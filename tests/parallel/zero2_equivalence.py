#!/usr/bin/env python3
"""ZeRO-2 (parallel.zero_stage=2: gradients in windows reduce-scattered as backward goes, no
whole gradient on any rank) against the single process: the same losses (1e-5 relative) for a
plain and a looped Ladder model at dp 2 and 4, with gradient accumulation, with tp (and
tp_sequence_parallel), pp (1F1B, interleaved, zero-bubble H1 and V; the looped model's tied
embedding and shared block summed over stages), sp and recomputation; its activation peak is `loom plan`'s; the final
checkpoint equals the single process's; resume across stages 1 <-> 2 and across dp is exact; and
on the emulated device the measured memory peak of stages 0, 1 and 2 is `loom plan`'s.

usage: zero2_equivalence.py LOOM_BINARY SOURCE_DIR [--device DEVICE]
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (failures, mpirun, resume_case, run_models,  # noqa: E402
                                train_case, training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

MODELS = {
    "plain": "model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 "
             "block_layers: 4 loops: 1 tie_embeddings: false }",
    # Backward keeps two layers' gradient windows open under Ladder. (The looped model's prelude
    # and coda fit in the slots: its every unit is step-long.)
    "ladder": "model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 "
              "block_layers: 4 loops: 1 tie_embeddings: false residual: LADDER }",
    "looped": "model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 "
              "prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 input_injection: true "
              "residual: LADDER }",
}
COMMON = training_config(global_batch=16, eval_batches=4)
ZERO2 = "parallel.zero_stage=2"


def cases(model_name, config, reference):
    if model_name == "ladder":
        for tag, ranks, overrides in (
                ("dp2-accum", 2, ["parallel.dp=2", ZERO2, "train.micro_batch=1"]),
                ("dp2-tp2", 4, ["parallel.dp=2", "parallel.tp=2", ZERO2]),
                ("dp2-tsp", 4, ["parallel.dp=2", "parallel.tp=2", ZERO2, "train.micro_batch=1",
                                "parallel.tp_sequence_parallel=true"])):
            train_case(LOOM, model_name, config, reference, tag, ranks, overrides)
        return
    if model_name == "plain":
        check_device_memory()
    layouts = [
        # (tag, ranks, overrides, compare the final checkpoint)
        ("dp2", 2, ["parallel.dp=2", ZERO2], True),
        ("dp4-accum", 4, ["parallel.dp=4", ZERO2, "train.micro_batch=1"], False),
        ("dp2-tp2", 4, ["parallel.dp=2", "parallel.tp=2", ZERO2], True),
        ("dp2-sp2", 4, ["parallel.dp=2", "parallel.sp=2", ZERO2], False),
        ("dp2-recompute", 2, ["parallel.dp=2", ZERO2, "train.recompute=SQRT"], False),
    ]
    pp2 = ["parallel.dp=2", "parallel.pp=2", ZERO2, "train.micro_batch=1"]
    if model_name == "plain":
        layouts += [
            ("dp2-pp2", 4, pp2, True),
            ("dp2-pp2-interleaved", 4, pp2 + ["parallel.pipeline_schedule=INTERLEAVED_1F1B",
                                              "parallel.virtual_stages=2"], False),
            ("dp2-pp2-zbh1", 4, pp2 + ["parallel.pipeline_schedule=ZERO_BUBBLE_H1"], False),
        ]
    else:  # the tied embedding and the shared block on both stages: summed over them
        layouts += [
            ("dp2-tsp", 4, ["parallel.dp=2", "parallel.tp=2", ZERO2,
                            "parallel.tp_sequence_parallel=true"], False),
            ("dp2-pp2", 4, pp2, True),
            ("dp2-pp2-zbv", 4, pp2 + ["parallel.pipeline_schedule=ZERO_BUBBLE_V",
                                      "parallel.virtual_stages=2"], False),
            ("dp2-pp2-tp2", 8, pp2 + ["parallel.tp=2"], True),
        ]
    for tag, ranks, overrides, checkpoint in layouts:
        train_case(LOOM, model_name, config, reference, tag, ranks, overrides, checkpoint)

    # Resume across stages and layouts: a ZeRO-2 run's step-3 checkpoint continued by ZeRO-1 and
    # by ZeRO-2 at dp 4; a ZeRO-1 run's by ZeRO-2.
    zero2 = f"{model_name}-dp2"
    resume_case(LOOM, config, zero2, f"{model_name}: ZeRO-2 resumed by ZeRO-1", 2,
                ["parallel.dp=2", "parallel.zero_stage=1"], reference)
    resume_case(LOOM, config, zero2, f"{model_name}: ZeRO-2 resumed by ZeRO-2 at dp 4", 4,
                ["parallel.dp=4", ZERO2], reference)
    resume_case(LOOM, config, f"{model_name}-dp2-pp2",
                f"{model_name}: ZeRO-2 at pp 2 resumed by ZeRO-1 at dp 2, pp 1", 2,
                ["parallel.dp=2", "parallel.zero_stage=1"], reference)
    zero1 = train_case(LOOM, model_name, config, reference, "zero1", 2,
                       ["parallel.dp=2", "parallel.zero_stage=1"])
    resume_case(LOOM, config, zero1, f"{model_name}: ZeRO-1 resumed by ZeRO-2", 2,
                ["parallel.dp=2", ZERO2], reference)


MEMORY_CONFIG = """
model { vocab_size: 8192 d_model: 128 n_heads: 4 d_mlp: 512 max_seq_len: 32 prelude_layers: 0
        coda_layers: 0 block_layers: 8 loops: 1 tie_embeddings: false }
train { global_batch: 8 micro_batch: 2 seq_len: 32 steps: 2 eval_interval: 0 }
data { train_shards: "data/train_*.bin" val_shards: "" }
logging { interval: 1 sample_tokens: 0 }
runtime { threads: 1 device: EMULATED }
parallel { dp: 2 }
"""


def check_device_memory():
    """On the emulated device, whose allocations are counted exactly, the peak of ZeRO-0, 1 and 2
    is `loom plan`'s total, and ZeRO-2's is below ZeRO-1's by what its gradient windows save."""
    with open("memory.textproto", "w") as f:
        f.write(MEMORY_CONFIG)
    peaks = {}
    for stage in (0, 1, 2):
        stage_set = ["--set", f"parallel.zero_stage={stage}"]
        plan = subprocess.run([LOOM, "plan", "memory.textproto", *stage_set], capture_output=True,
                              text=True).stdout
        planned = re.search(r"^  total +([0-9.]+)", plan, re.M)
        cmd = mpirun(2) + [LOOM, "train", "memory.textproto", "--run-dir", f"memory-{stage}",
                           *stage_set]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=300,
                              env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        measured = re.search(r"device memory: at most ([0-9.]+) MiB", proc.stdout)
        if proc.returncode != 0 or not planned or not measured:
            failures.append(f"ZeRO-{stage} memory run: exit {proc.returncode}\n"
                            f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
            return
        peaks[stage] = float(measured.group(1))
        ok = abs(peaks[stage] - float(planned.group(1))) <= 0.1  # the log's one decimal
        print(f"{'ok' if ok else 'FAIL'}: ZeRO-{stage} at dp 2: device memory peak "
              f"{peaks[stage]:.1f} MiB measured, {planned.group(1)} MiB planned")
        if not ok:
            failures.append(f"ZeRO-{stage}: peak {peaks[stage]} MiB, plan {planned.group(1)}")
    if not peaks[2] < peaks[1] < peaks[0]:
        failures.append(f"device memory peaks by stage {peaks}: not falling with the stage")


def main():
    run_models(LOOM, SRC, "loom-zero2-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
