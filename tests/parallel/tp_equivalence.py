#!/usr/bin/env python3
"""Tensor-parallel runs against the single-process run: same config, same global batch, same
seed -> the same training and validation losses (relative difference <= 1e-5 at every step), for
standard and Ladder Residual models, plain and looped, learned and rotary positions, Llama-style
blocks, relaxed recursion and Mixture-of-Recursions (both routers), at tp = 2
and 4 (vocabulary 257 is padded to 258 and 260), tp x dp = 2 x 2 with and without ZeRO-1; and
checkpoints: a tp = 2 run cut back to its step-3 checkpoint resumes at tp = 1, at tp = 4 and at
tp = 2 x dp = 2 with ZeRO-1 and continues exactly; and greedy sampling at the end of a tp = 2 run gives tp = 1's text.

usage: tp_equivalence.py LOOM_BINARY SOURCE_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (compare, compare_checkpoints, failures, metrics,  # noqa: E402
                                mpirun, resume_case, run, run_models, sample_text, sets,
                                training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

SHAPE = "vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32"
MODELS = {
    "plain": f"model {{ {SHAPE} block_layers: 2 loops: 1 }}",
    "plain-ladder": f"model {{ {SHAPE} block_layers: 2 loops: 1 residual: LADDER norm: RMSNORM "
                    "position: ROTARY }",
    "looped": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
              "input_injection: true tie_embeddings: false }",
    "looped-ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 2 coda_layers: 1 "
                     "input_injection: true residual: LADDER tie_embeddings: false }",
    # Llama-style blocks: 8 query heads over 4 key/value heads (one per rank at tp = 4), SwiGLU,
    # no linear biases; relaxed recursion (per-iteration LoRA of rank 4).
    "llama": "model { vocab_size: 257 d_model: 32 n_heads: 8 n_kv_heads: 4 d_mlp: 48 "
             "max_seq_len: 32 prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
             "norm: RMSNORM position: ROTARY mlp: SWIGLU bias: false tie_embeddings: false "
             "loop_lora_rank: 4 }",
    # Relaxed recursion on GPT-2 blocks: biases (the row-parallel ones added once), ladder.
    "relaxed-ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 2 "
                      "coda_layers: 1 residual: LADDER loop_lora_rank: 3 }",
    # Mixture-of-Recursions: expert choice on Llama-style blocks, token choice on GPT-2 blocks
    # with the first iteration's keys and values shared; routing is the same on every tp rank.
    # Learned positions: with rotary ones a freshly
    # initialised model gives repeated tokens (the indentation of source text) router scores
    # equal to within rounding, so the top-k among them follows the order of the tensor-parallel
    # sums (parity_mor_expert checks rotary against PyTorch).
    "mor-expert": "model { vocab_size: 257 d_model: 32 n_heads: 8 n_kv_heads: 4 d_mlp: 48 "
                  "max_seq_len: 32 prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
                  "norm: RMSNORM mlp: SWIGLU bias: false "
                  "recursion_router: EXPERT_CHOICE recursion_aux_weight: 0.1 }",
    "mor-token": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 3 coda_layers: 0 "
                 "recursion_router: TOKEN_CHOICE recursion_kv: SHARED_FIRST "
                 "recursion_gate_scale: 0.5 "
                 "recursion_aux_weight: 0.1 }",
}
COMMON = training_config(global_batch=8, eval_batches=2)


def check_sampling():
    """Greedy sampling at the end of a run is collective over rank 0's tensor-parallel group and
    gives the same text as at tp = 1."""
    texts = {}
    for tp in (1, 2):
        run_dir = f"sample-tp{tp}"
        cmd = [LOOM, "train", "plain-ladder.textproto", "--run-dir", run_dir,
               *sets(["train.steps=6", "optim.warmup_steps=0", "optim.lr=1e-2",  # enough to sample
                      "logging.sample_tokens=24", "logging.sample_temperature=0",
                      f"parallel.tp={tp}"])]
        if run((mpirun(tp) if tp > 1 else []) + cmd, f"sampling at tp={tp}"):
            texts[tp] = sample_text(run_dir)
    if len(texts) == 2:
        same = texts[1] is not None and texts[1] == texts[2]
        print(f"{'ok' if same else 'FAIL'}: greedy sample at tp=2 {'equals' if same else 'differs from'}"
              f" tp=1's ({len(texts[1] or '')} characters)")
        if not same:
            failures.append(f"sampling: tp=2 gave {texts[2]!r}, tp=1 {texts[1]!r}")


def check_routing(name, reference, got):
    """A routed run's metrics: each iteration's share of the tokens (expert choice: exactly its
    capacity, ⌊(3 − r)/3 · 32⌋ of 32; token choice: all at the first iteration, never more at a
    later one) equal the single process's, and so do its step FLOPs."""
    for m, ref in zip(got, reference):
        fractions = m.get("routed_fraction")
        ok = (fractions == ref.get("routed_fraction") and fractions is not None
              and fractions[0] == 1 and fractions == sorted(fractions, reverse=True)
              and m.get("step_flops", 0) > 0
              and abs(m["step_flops"] - ref["step_flops"]) <= 1e-6 * ref["step_flops"])
        if name.startswith("mor-expert"):
            ok = ok and fractions == [1, 21 / 32, 10 / 32]
        if not ok:
            failures.append(f"{name}: step {m['step']} routed {fractions} and "
                            f"{m.get('step_flops')} FLOPs; single process "
                            f"{ref.get('routed_fraction')} and {ref.get('step_flops')}")
            return
    print(f"ok: {name}: routed fractions {got[-1]['routed_fraction']} as the single process's")


def cases(model_name, config, reference):
    cases = [(2, 1, []), (4, 1, []), (2, 2, [])]
    if model_name.startswith(("looped", "mor")):
        cases.append((2, 2, ["parallel.zero_stage=1", "parallel.bucket_mb=0.01"]))
    for tp, dp, overrides in cases:
        name = f"{model_name} tp={tp} dp={dp} {' '.join(overrides)}"
        run_dir = f"{model_name}-tp{tp}-dp{dp}-{len(overrides)}"
        cmd = mpirun(tp * dp) + [LOOM, "train", config, "--run-dir", run_dir,
                                 *sets([f"parallel.tp={tp}", f"parallel.dp={dp}"] + overrides)]
        if run(cmd, name):
            compare(name, reference, metrics(run_dir))
            if model_name.startswith("mor"):
                check_routing(name, reference, metrics(run_dir))
            if overrides:  # ZeRO-1 × tp: moments sharded two ways, gathered to save
                compare_checkpoints(name, f"ref-{model_name}", run_dir)
        if model_name == "looped-ladder" and tp == 2 and dp == 1 and not overrides:
            # Resharding: its step-3 checkpoint (global tensors) resumes at tp 1, at tp 4, and
            # at tp 2 × dp 2 with ZeRO-1.
            for new_tp, new_dp, extra in ((1, 1, []), (4, 1, []),
                                          (2, 2, ["parallel.zero_stage=1"])):
                resume_case(LOOM, config, run_dir,
                            f"{model_name} tp=2 resumed from step 3 at tp={new_tp} "
                            f"dp={new_dp} {' '.join(extra)}", new_tp * new_dp,
                            [f"parallel.tp={new_tp}", f"parallel.dp={new_dp}"] + extra,
                            reference)
    if model_name == "plain-ladder":
        check_sampling()


def main():
    run_models(LOOM, SRC, "loom-tp-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
