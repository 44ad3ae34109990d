#!/usr/bin/env python3
"""Data-parallel runs against the single-process run: same config, same global batch, same seed
-> the same training and validation losses (relative difference <= 1e-5 at every step), for a
plain and a looped model, dp = 2, 4 and 8, with and without ZeRO-1, with gradient accumulation,
several gradient buckets, overlap on and off, through mpirun directly and through `loom train`'s
own launcher; and checkpoints: a ZeRO-1 run resumed (also at another dp) continues exactly.

usage: dp_equivalence.py LOOM_BINARY SOURCE_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (compare, metrics, mpirun, resume_case, run,  # noqa: E402
                                run_models, training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

MODELS = {
    "plain": "model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 "
             "block_layers: 2 loops: 1 }",
    "looped": "model { vocab_size: 257 d_model: 32 n_heads: 2 d_mlp: 64 max_seq_len: 32 "
              "prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 input_injection: true "
              "residual: LADDER tie_embeddings: false }",
}
COMMON = training_config(global_batch=16, eval_batches=4)


def cases(model_name, config, reference):
    cases = [
        # (ranks, extra overrides, through loom's own launcher)
        (2, [], False),
        (2, ["train.micro_batch=1"], False),  # 8 micro-batches per rank
        (2, ["parallel.zero_stage=1"], True),
        (4, ["parallel.bucket_mb=0.01"], False),
        (4, ["parallel.zero_stage=1", "parallel.bucket_mb=0.01"], False),
        (4, ["parallel.overlap_grad_reduce=false", "parallel.bucket_mb=0.02"], True),
    ]
    if model_name == "looped":
        cases.append((8, ["parallel.zero_stage=1", "parallel.bucket_mb=0.01"], False))
        cases.append((2, ["parallel.zero_stage=1", "parallel.bucket_mb=0.01"], "tcp"))
    for ranks, overrides, own_launcher in cases:
        name = f"{model_name} dp={ranks} {' '.join(overrides)}" + {
            True: " (loom launcher)", False: " (mpirun)",
            "tcp": " (mpirun, ranks over TCP as between machines)"}[own_launcher]
        run_dir = f"{model_name}-dp{ranks}-{len(overrides)}-{own_launcher}"
        sets = [a for o in [f"parallel.dp={ranks}"] + overrides for a in ("--set", o)]
        launcher = {True: [], False: mpirun(ranks),
                    "tcp": mpirun(ranks) + ["--mca", "btl", "tcp,self"]}[own_launcher]
        cmd = launcher + [LOOM, "train", config, *sets, "--run-dir", run_dir]
        if run(cmd, name):
            compare(name, reference, metrics(run_dir))

    # Resume: a ZeRO-1 run cut back to its step-3 checkpoint continues exactly, at the same dp
    # (ZeRO) and at another (dp = 4 without ZeRO).
    full = f"{model_name}-zero-full"
    sets = ["--set", "parallel.dp=2", "--set", "parallel.zero_stage=1"]
    if not run(mpirun(2) + [LOOM, "train", config, *sets, "--run-dir", full],
               f"{model_name} zero run"):
        return
    for ranks, overrides in ((2, ["parallel.zero_stage=1"]), (4, [])):
        resume_case(LOOM, config, full,
                    f"{model_name} resumed from step 3 at dp={ranks} {' '.join(overrides)}",
                    ranks, [f"parallel.dp={ranks}"] + overrides, reference)


def main():
    run_models(LOOM, SRC, "loom-dp-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
