#!/usr/bin/env python3
"""Ring sequence-parallel runs against the single-process run: same config, same global batch,
same seed -> the same training and validation losses (relative difference <= 1e-5 at every
step). sp = 2 and 4 (zigzag) for a plain GPT with learned positions, a looped model with input
injection and an untied head, and a ladder looped model with rotary positions and injection; the
contiguous layout at sp = 2; sp 2 x tp 2; sp 2 x dp 2 with ZeRO-1 (its final checkpoint equal to
the single process's); the 8-rank 4-D layouts pp 2 x sp 2 x tp 2 and dp 2 x pp 2 x sp 2; and a
sp = 2 run cut back to its step-3 checkpoint resumes at sp = 1 and sp = 4, exactly. Ulysses
(sequence_method ULYSSES: all-to-alls to a head split around attention) at sp = 2 and 4, contiguous,
grouped-query, sp 2 x tp 2, pp 2 x sp 2 x tp 2 and sp 2 x dp 2 with ZeRO-1; the ring's sp = 2
checkpoint resumes under Ulysses exactly. Every run's measured activation peak is what `loom plan`
says the layout allocates.

usage: sp_equivalence.py LOOM_BINARY SOURCE_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (resume_case, run_models, train_case,  # noqa: E402
                                training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

SHAPE = "vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32"
MODELS = {
    "plain": f"model {{ {SHAPE} prelude_layers: 0 block_layers: 2 loops: 1 coda_layers: 0 }}",
    "looped": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 1 "
              "input_injection: true tie_embeddings: false }",
    "looped-ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 0 "
                     "input_injection: true residual: LADDER norm: RMSNORM position: ROTARY }",
    # Llama-style blocks: the ring carries only the 2 key/value heads of the 4 query heads (one
    # per rank at tp = 2); SwiGLU, no linear biases.
    "llama": f"model {{ {SHAPE} n_kv_heads: 2 prelude_layers: 1 block_layers: 1 loops: 2 "
             "coda_layers: 1 norm: RMSNORM position: ROTARY mlp: SWIGLU bias: false "
             "loop_lora_rank: 2 }",
}
COMMON = training_config(global_batch=8, eval_batches=2)  # 4 micro-batches of 2 at dp = 1


def train_and_compare(model_name, config, reference, tag, ranks, overrides, checkpoint=False):
    return train_case(LOOM, model_name, config, reference, tag, ranks, overrides, checkpoint)


ULYSSES = "parallel.sequence_method=ULYSSES"


def cases(model_name, config, reference):
    for sp in (2, 4):
        train_and_compare(model_name, config, reference, f"sp{sp}", sp, [f"parallel.sp={sp}"])
    if model_name == "plain":
        train_and_compare(model_name, config, reference, "sp2-contiguous", 2,
                          ["parallel.sp=2", "parallel.sequence_layout=CONTIGUOUS"])
        for sp in (2, 4):
            train_and_compare(model_name, config, reference, f"sp{sp}-ulysses", sp,
                              [f"parallel.sp={sp}", ULYSSES])
        train_and_compare(model_name, config, reference, "sp2-contiguous-ulysses", 2,
                          ["parallel.sp=2", "parallel.sequence_layout=CONTIGUOUS", ULYSSES])
        return
    if model_name == "llama":
        train_and_compare(model_name, config, reference, "sp2-tp2", 4,
                          ["parallel.sp=2", "parallel.tp=2"])
        train_and_compare(model_name, config, reference, "sp2-ulysses", 2,
                          ["parallel.sp=2", ULYSSES])
        return
    if model_name == "looped-ladder":
        train_and_compare(model_name, config, reference, "sp2-tp2", 4,
                          ["parallel.sp=2", "parallel.tp=2"])
        train_and_compare(model_name, config, reference, "pp2-sp2-tp2", 8,
                          ["parallel.pp=2", "parallel.sp=2", "parallel.tp=2"])
        train_and_compare(model_name, config, reference, "sp2-tp2-ulysses", 4,
                          ["parallel.sp=2", "parallel.tp=2", ULYSSES])
        train_and_compare(model_name, config, reference, "pp2-sp2-tp2-ulysses", 8,
                          ["parallel.pp=2", "parallel.sp=2", "parallel.tp=2", ULYSSES])
        return
    train_and_compare(model_name, config, reference, "sp2-dp2-zero-ulysses", 4,
                      ["parallel.sp=2", "parallel.dp=2", "parallel.zero_stage=1",
                       "parallel.bucket_mb=0.01", ULYSSES], checkpoint=True)
    train_and_compare(model_name, config, reference, "sp2-dp2-zero", 4,
                      ["parallel.sp=2", "parallel.dp=2", "parallel.zero_stage=1",
                       "parallel.bucket_mb=0.01"], checkpoint=True)
    train_and_compare(model_name, config, reference, "dp2-pp2-sp2", 8,
                      ["parallel.dp=2", "parallel.pp=2", "parallel.sp=2"], checkpoint=True)
    for ranks, overrides in ((1, []), (4, ["parallel.sp=4"]), (2, ["parallel.sp=2", ULYSSES])):
        resume_case(LOOM, config, f"{model_name}-sp2",
                    f"{model_name} sp=2 resumed from step 3 at {' '.join(overrides) or 'sp=1'}",
                    ranks, overrides, reference)


def main():
    run_models(LOOM, SRC, "loom-sp-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
