#!/usr/bin/env python3
"""Sequence parallelism inside tensor parallelism (parallel.tp_sequence_parallel: the stream,
the norms and the pipeline boundaries cut over the tp ranks, reduce-scatters and all-gathers
instead of all-reduces) against the single-process run: the same training and validation losses
(relative difference <= 1e-5 at every step) for a looped Ladder model with input injection
(RMSNorm, rotary) at tp 2 and 4, with SQRT and LOOP_BOUNDARY recomputation, with pp 2 (1F1B and ZB-V),
with ring and Ulysses sequence parallelism at sp 2, and at dp 2 x tp 2 x pp 2 with ZeRO-1 on 8
ranks (its final checkpoint equal to the single process's); a GPT-2 model (LayerNorm, learned
positions, biases, tied head, relaxed recursion) at tp 2 and at tp 2 x dp 2 with ZeRO-1; and a
Llama-style one (grouped-query, SwiGLU). A tp 2 checkpoint written with it resumes without it and
at tp 1, and one written without it resumes with it, exactly. Every run's measured activation
peak is what `loom plan` says, and the plan's activations at tp 2 fall with it. Greedy sampling
at the end of a tp 2 run with it gives tp 1's text.

usage: tsp_equivalence.py LOOM_BINARY SOURCE_DIR [--device DEVICE]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (DEVICE, failures, mpirun, planned_activations,  # noqa: E402
                                resume_case, run, run_models, sample_text, sets, train_case,
                                training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

SHAPE = "vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32"
MODELS = {
    "ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 2 coda_layers: 1 "
              "input_injection: true residual: LADDER norm: RMSNORM position: ROTARY "
              "tie_embeddings: false }",
    "gpt": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
           "loop_lora_rank: 2 }",
    "llama": "model { vocab_size: 257 d_model: 32 n_heads: 8 n_kv_heads: 4 d_mlp: 48 "
             "max_seq_len: 32 prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
             "norm: RMSNORM position: ROTARY mlp: SWIGLU bias: false tie_embeddings: false }",
}
COMMON = training_config(global_batch=8, eval_batches=2)  # 4 micro-batches of 2 at dp = 1
TSP = "parallel.tp_sequence_parallel=true"


def check_plan_falls(config):
    """At tp 2 the plan's activations with sequence parallelism are below those without."""
    without = planned_activations(LOOM, config, ["parallel.tp=2"])
    with_ = planned_activations(LOOM, config, ["parallel.tp=2", TSP])
    ok = bool(without) and bool(with_) and max(with_) < max(without)
    print(f"{'ok' if ok else 'FAIL'}: {config}: tp 2 activations {max(without or [0]):.3f} MiB, "
          f"{max(with_ or [0]):.3f} MiB with {TSP}")
    if not ok:
        failures.append(f"{config}: planned activations {with_} with {TSP}, {without} without")


def check_sampling(config):
    """Greedy sampling at the end of a run with it (prompts of any length: on rank 0's whole
    model) gives the text tp = 1 gives."""
    texts = {}
    for ranks, extra in ((1, []), (2, ["parallel.tp=2", TSP])):
        run_dir = f"sample-{ranks}"
        cmd = [LOOM, "train", config, "--run-dir", run_dir,
               *sets(["train.steps=6", "optim.warmup_steps=0", "optim.lr=1e-2",
                      "logging.sample_tokens=24", "logging.sample_temperature=0"] + extra)]
        if run((mpirun(ranks) if ranks > 1 else []) + cmd, f"sampling on {ranks} ranks"):
            texts[ranks] = sample_text(run_dir)
    if len(texts) == 2:
        same = texts[1] is not None and texts[1] == texts[2]
        print(f"{'ok' if same else 'FAIL'}: greedy sample at tp=2 with {TSP} "
              f"{'equals' if same else 'differs from'} tp=1's ({len(texts[1] or '')} characters)")
        if not same:
            failures.append(f"sampling: tp=2 gave {texts[2]!r}, tp=1 {texts[1]!r}")


def case(model_name, config, reference, tag, ranks, overrides, checkpoint=False):
    return train_case(LOOM, model_name, config, reference, tag, ranks, [TSP] + overrides,
                      checkpoint)


def cases(model_name, config, reference):
    if model_name == "ladder":
        tp2 = case(model_name, config, reference, "tp2", 2, ["parallel.tp=2"])
        check_plan_falls(config)
        if DEVICE:  # the emulated device: the layouts that move its memory most
            case(model_name, config, reference, "dp2-tp2-pp2", 8,
                 ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1",
                  "parallel.bucket_mb=0.01"])
            return
        case(model_name, config, reference, "tp4", 4, ["parallel.tp=4"])
        for policy in ("SQRT", "LOOP_BOUNDARY"):
            case(model_name, config, reference, f"tp2-{policy}", 2,
                 ["parallel.tp=2", f"train.recompute={policy}"])
        case(model_name, config, reference, "tp2-pp2", 4, ["parallel.tp=2", "parallel.pp=2"])
        case(model_name, config, reference, "tp2-pp2-zbv", 4,
             ["parallel.tp=2", "parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
              "parallel.virtual_stages=2"])
        case(model_name, config, reference, "tp2-sp2", 4, ["parallel.tp=2", "parallel.sp=2"])
        case(model_name, config, reference, "tp2-sp2-ulysses", 4,
             ["parallel.tp=2", "parallel.sp=2", "parallel.sequence_method=ULYSSES"])
        case(model_name, config, reference, "dp2-tp2-pp2", 8,
             ["parallel.dp=2", "parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1",
              "parallel.bucket_mb=0.01"], checkpoint=True)
        # Checkpoints hold the same global tensors with and without it.
        for ranks, overrides in ((1, []), (2, ["parallel.tp=2"])):
            resume_case(LOOM, config, tp2, f"{model_name} tp=2 with it resumed at "
                        f"{' '.join(overrides) or 'tp=1'} without it", ranks, overrides, reference)
        plain = train_case(LOOM, model_name, config, reference, "tp2-plain", 2, ["parallel.tp=2"])
        resume_case(LOOM, config, plain, f"{model_name} tp=2 without it resumed with it", 2,
                    ["parallel.tp=2", TSP], reference)
        check_sampling(config)
    elif model_name == "gpt":
        case(model_name, config, reference, "tp2", 2, ["parallel.tp=2"])
        if not DEVICE:
            case(model_name, config, reference, "tp2-dp2-zero", 4,
                 ["parallel.tp=2", "parallel.dp=2", "parallel.zero_stage=1",
                  "parallel.bucket_mb=0.01"], checkpoint=True)
    else:
        case(model_name, config, reference, "tp2", 2, ["parallel.tp=2"])


def main():
    run_models(LOOM, SRC, "loom-tsp-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
