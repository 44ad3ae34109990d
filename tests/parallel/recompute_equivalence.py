#!/usr/bin/env python3
"""Recomputation changes memory, never numbers: at each layout, a run with train.recompute
LOOP_BOUNDARY or SQRT has bitwise the same losses and the same final checkpoint (parameters and
Adam moments, byte for byte — so every step's gradients were equal) as the same layout keeping
everything (NONE). Standard and ladder looped models with input injection, at dp 2 × tp 2; the
ladder also at pp 2 (interleaved, chunk edges inside iterations), sp 2, and with truncated
backprop (model.backprop_loops); the standard one also under the zero-bubble schedules (ZB-H1 at
pp 2 × tp 2, ZB-V at pp 2), whose deferred weight pass runs a recomputed unit's forward again.
Every run's measured activation peak is what `loom plan` says.

Sampled loop counts (model.loops_sampling): a dp 2 run draws the same count on every rank (its
losses equal the single process's within 1e-5, and the counts in metrics.jsonl are the single
process's), and a run cut back to its step-3 checkpoint resumes with the same counts and losses.

usage: recompute_equivalence.py LOOM_BINARY SOURCE_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from equivalence_common import (checkpoint_tensors, check_activation_memory, compare, failures,  # noqa: E402
                                metrics, mpirun, resume_case, run, run_models, sets,
                                training_config)

LOOM, SRC = sys.argv[1], sys.argv[2]

SHAPE = "vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32"
MODELS = {
    "looped": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 5 coda_layers: 1 "
              "input_injection: true tie_embeddings: false }",
    "ladder": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 2 loops: 5 coda_layers: 1 "
              "input_injection: true residual: LADDER norm: RMSNORM position: ROTARY }",
    "sampled": f"model {{ {SHAPE} prelude_layers: 1 block_layers: 1 loops: 4 coda_layers: 1 "
               "input_injection: true loops_sampling { kind: UNIFORM min: 2 max: 7 } }",
}
COMMON = training_config(global_batch=8, eval_batches=2)  # 4 micro-batches of 2 at dp = 1
POLICIES = ("LOOP_BOUNDARY", "SQRT")


def checkpoint_bytes(run_dir):
    saved = checkpoint_tensors(os.path.join(run_dir, "checkpoints", "step_0000006"))
    return {kind: values.tobytes() for kind, values in saved.items()}


def train(config, tag, ranks, overrides):
    cmd = [LOOM, "train", config, "--run-dir", tag, *sets(overrides)]
    return run((mpirun(ranks) if ranks > 1 else []) + cmd, f"{tag} {' '.join(overrides)}")


def same_as_keeping_everything(model_name, config, layout, ranks, overrides):
    """The layout under NONE, then under each policy: the same losses and checkpoint bytes."""
    base = f"{model_name}-{layout}"
    if not train(config, f"{base}-NONE", ranks, overrides):
        return
    reference, kept = metrics(f"{base}-NONE"), checkpoint_bytes(f"{base}-NONE")
    for policy in POLICIES:
        tag, name = f"{base}-{policy}", f"{model_name} {layout} {policy}"
        with_policy = overrides + [f"train.recompute={policy}"]
        if not train(config, tag, ranks, with_policy):
            continue
        got = metrics(tag)
        losses_equal = [(m.get("loss"), m.get("val_loss")) for m in got] == \
                       [(m.get("loss"), m.get("val_loss")) for m in reference]
        bytes_equal = checkpoint_bytes(tag) == kept
        ok = losses_equal and bytes_equal
        print(f"{'ok' if ok else 'FAIL'}: {name}: losses {'bitwise equal' if losses_equal else 'DIFFER'}, "
              f"checkpoint {'byte for byte equal' if bytes_equal else 'DIFFERS'} (vs NONE)")
        if not ok:
            failures.append(f"{name}: not bitwise equal to NONE")
        check_activation_memory(LOOM, name, config, tag, with_policy)


def sampled_cases(config, reference):
    loops = [m["loops"] for m in reference]
    if len(set(loops)) < 2:
        failures.append(f"sampled: every step drew the same loop count {loops}")
    if train(config, "sampled-dp2", 2, ["parallel.dp=2"]):
        compare("sampled dp=2", reference, metrics("sampled-dp2"))
        got = [m["loops"] for m in metrics("sampled-dp2")]
        print(f"{'ok' if got == loops else 'FAIL'}: sampled dp=2 loop counts {got} (single {loops})")
        if got != loops:
            failures.append(f"sampled dp=2: loop counts {got}, single process {loops}")
        check_activation_memory(LOOM, "sampled dp=2", config, "sampled-dp2", ["parallel.dp=2"])
    resume_case(LOOM, config, "ref-sampled", "sampled resumed from step 3", 1, [], reference)
    resumed = [m["loops"] for m in metrics("ref-sampled-resumed-same")]
    if resumed != loops:
        failures.append(f"sampled resume: loop counts {resumed}, first run {loops}")


def cases(model_name, config, reference):
    if model_name == "sampled":
        sampled_cases(config, reference)
        return
    same_as_keeping_everything(model_name, config, "dp2-tp2", 4, ["parallel.dp=2", "parallel.tp=2"])
    if model_name != "ladder":
        same_as_keeping_everything(model_name, config, "pp2-tp2-zb-h1", 4,
                                   ["parallel.pp=2", "parallel.tp=2",
                                    "parallel.pipeline_schedule=ZERO_BUBBLE_H1"])
        same_as_keeping_everything(model_name, config, "pp2-zb-v", 2,
                                   ["parallel.pp=2", "parallel.virtual_stages=2",
                                    "parallel.pipeline_schedule=ZERO_BUBBLE_V"])
        return
    same_as_keeping_everything(model_name, config, "pp2-interleaved", 2,
                               ["parallel.pp=2", "parallel.virtual_stages=2",
                                "parallel.pipeline_schedule=INTERLEAVED_1F1B",
                                "parallel.pipeline_layout=3,4,2,3"])
    same_as_keeping_everything(model_name, config, "sp2", 2, ["parallel.sp=2"])
    same_as_keeping_everything(model_name, config, "truncated-dp2-tp2", 4,
                               ["parallel.dp=2", "parallel.tp=2", "model.backprop_loops=2"])


def main():
    run_models(LOOM, SRC, "loom-recompute-", MODELS, COMMON, cases)


if __name__ == "__main__":
    main()
