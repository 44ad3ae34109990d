#!/usr/bin/env python3
"""bf16 training (runtime.precision BF16) against fp32: the single process on the CPU and on the
emulated device, and on the emulated device dp 2 x tp 2 with ZeRO-1, pp 2 (1F1B and interleaved),
sp 2 and dp 2 with ZeRO-1 reducing gradients in bf16 (parallel.grad_reduce_dtype: half the
gradient bytes), for a looped model with learned positions, injection and an untied head and a ladder
looped model with RMSNorm and rotary positions. Every bf16 run's training and validation losses
are within BF16_TOLERANCE (relative) of the fp32 single process's at every step; the emulated
single process equals the CPU's bit for bit; every run's measured activation peak is what
`loom plan` says the bf16 layout allocates (about half of fp32's).

Why BF16_TOLERANCE = 2e-3: bf16 keeps 8 significant bits, so each stored activation, weight copy
and message carries a relative rounding error of up to 2^-9 (about 2e-3). The loss is a mean of
cross-entropies over 256 tokens per micro-batch and the roundings are unbiased (to nearest
even), so they mostly cancel: over these 6 steps the measured worst differences are 2e-5 to 2e-4
(printed below). A bug the test must catch moves the loss far more: a tensor-parallel sum left
out, a ring block missed or a stale weight copy changes it by 1e-2 or more from the first step
on. 2e-3 sits between the two with a 10x margin on each side.

usage: precision_equivalence.py LOOM_BINARY SOURCE_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (check_activation_memory, compare, compare_bits,  # noqa: E402
                                failures, metrics, mpirun, run, run_models, sets,
                                training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]
BF16_TOLERANCE = 2e-3

SHAPE = "vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32"
MODELS = {
    "looped": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 1 "
              "input_injection: true tie_embeddings: false }",
    "looped-ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 0 "
                     "input_injection: true residual: LADDER norm: RMSNORM position: ROTARY }",
}
COMMON = training_config(global_batch=8, eval_batches=2)  # 4 micro-batches of 2 at dp = 1
BF16 = ["runtime.precision=BF16"]
EMULATED = ["runtime.device=EMULATED"]


def bf16_run(model_name, config, reference, tag, ranks, overrides):
    run_dir = f"{model_name}-{tag}"
    name = f"{model_name} {' '.join(overrides)}"
    cmd = [LOOM, "train", config, "--run-dir", run_dir, *sets(overrides)]
    if not run((mpirun(ranks) if ranks > 1 else []) + cmd, name):
        return None
    compare(name + " against fp32", reference, metrics(run_dir), tolerance=BF16_TOLERANCE)
    check_activation_memory(LOOM, name, config, run_dir, overrides)
    return run_dir


def cases(model_name, config, reference):
    cpu = bf16_run(model_name, config, reference, "bf16", 1, BF16)
    emulated = bf16_run(model_name, config, reference, "bf16-emulated", 1, BF16 + EMULATED)
    if cpu and emulated:
        compare_bits(f"{model_name}: bf16 on EMULATED and on the CPU", emulated, cpu)
    layouts = [
        ("dp2-tp2-zero", 4, ["parallel.dp=2", "parallel.tp=2", "parallel.zero_stage=1",
                             "parallel.bucket_mb=0.01"]),
        ("pp2", 2, ["parallel.pp=2"]),
        ("pp2-interleaved", 2, ["parallel.pp=2", "parallel.pipeline_schedule=INTERLEAVED_1F1B",
                                "parallel.virtual_stages=2"]),
        ("sp2", 2, ["parallel.sp=2"]),
    ]
    for tag, ranks, overrides in layouts:
        bf16_run(model_name, config, reference, f"bf16-emulated-{tag}", ranks,
                 BF16 + EMULATED + overrides)
    # parallel.grad_reduce_dtype BF16: the same training within the bf16 tolerance, and 2/3 of
    # the data-parallel bytes of the fp32 reduction of the same layout: per step a rank sends
    # the gradients (n elements, reduce-scatter: 4n bytes in fp32, 2n in bf16) and its half of
    # the updated fp32 parameters (all-gather: 2n bytes either way), 4n / 6n.
    zero = ["parallel.dp=2", "parallel.zero_stage=1", "parallel.bucket_mb=0.01"]
    fp32_wire = bf16_run(model_name, config, reference, "bf16-emulated-dp2-zero", 2,
                         BF16 + EMULATED + zero)
    bf16_wire = bf16_run(model_name, config, reference, "bf16-emulated-dp2-zero-bf16-reduce", 2,
                         BF16 + EMULATED + zero + ["parallel.grad_reduce_dtype=BF16"])
    if fp32_wire and bf16_wire:
        ratio = metrics(bf16_wire)[-1]["sent_mib"]["dp"] / metrics(fp32_wire)[-1]["sent_mib"]["dp"]
        print(f"{model_name}: dp bytes with grad_reduce_dtype BF16 / FP32 = {ratio:.4f}")
        if abs(ratio - 2 / 3) > 0.01:
            failures.append(f"{model_name}: grad_reduce_dtype BF16 sends {ratio:.4f} of fp32's bytes")


def main():
    run_models(LOOM, SRC, "loom-precision-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
