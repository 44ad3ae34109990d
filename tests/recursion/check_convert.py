#!/usr/bin/python3
"""loom convert --to-looped: an unshared model into a looped one (Relaxed Recursive Transformers).

A 6-layer plain model is trained one step at a learning rate of 1e-9 (so its norms and biases
are, to fp32, the same in every layer, as the conversion's exactness needs) and converted to
1 + 2 × 2 + 1 layers:
  * at full LoRA rank (d_model) the looped model's validation loss equals the unshared one's;
  * at rank 0 the model is pure recursion (no LoRA tensors) whose shared layers are exactly the
    chosen init: lower (the first K middle layers), average (the mean of the tied layers),
    stepwise (the middle layers at round(linspace));
  * at rank 4 each iteration's delta is the truncated SVD of W_l - W' (B·A equals numpy's best
    rank-4 approximation);
  * training continues from the converted checkpoint (loom train --init-from);
  * a layer count that does not add up, and a looped source, are refused naming the numbers.
Usage: check_convert.py LOOM
"""

import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch_ref"))
import loom_torch  # noqa: E402
from recursion_common import check, eval_loss, finish, relative, run_loom, write_shard  # noqa: E402

LOOM = sys.argv[1]
MODEL = ("model { vocab_size: 257 d_model: 32 n_heads: 4 d_mlp: 64 max_seq_len: 32 "
         "prelude_layers: 0 block_layers: 6 loops: 1 coda_layers: 0 init_std: 0.1 }\n")
SHAPE = ["--prelude", "1", "--block-layers", "2", "--loops", "2", "--coda", "1"]
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


def loom(*args, expect_ok=True):
    return run_loom(LOOM, *args, expect_ok=expect_ok)


def weights(work, run_dir, tag):
    path = os.path.join(work, f"{tag}.safetensors")
    loom("export", run_dir, "--safetensors", path)
    return loom_torch.load_safetensors(path)


def layer(tensors, prefix):
    """{suffix: array} of one unique layer's own tensors (no LoRA factors)."""
    return {k[len(prefix):]: v for k, v in tensors.items()
            if k.startswith(prefix) and ".lora." not in k}


def convert(run, out, *extra):
    return loom("convert", run, "--to-looped", *SHAPE, "--output", out, *extra)


def check_inits(work, source_run, src):
    """Rank 0: pure recursion, the shared layers exactly as each init says. Source block layers
    1..4 are the middle ones (block.1 .. block.4 in the source's names)."""
    middle = [layer(src, f"block.{1 + m}.") for m in range(4)]
    expect = {"lower": [middle[0], middle[1]],
              "stepwise": [middle[0], middle[3]],  # round(linspace(0, 3, 2)) = 0, 3
              "average": [{k: (middle[j][k].astype(np.float64) + middle[2 + j][k]) / 2
                           for k in middle[j]} for j in range(2)]}
    for init, want in expect.items():
        out = os.path.join(work, f"pure-{init}")
        convert(source_run, out, "--init", init)
        got = weights(work, out, f"pure-{init}")
        worst = max(float(np.max(np.abs(layer(got, f"block.{j}.")[k] - want[j][k])))
                    for j in range(2) for k in want[j])
        no_lora = not any(".lora." in k for k in got)
        ends = all(np.array_equal(got["prelude.0." + k], src["block.0." + k])
                   for k in layer(src, "block.0.")) and \
            all(np.array_equal(got["coda.0." + k], src["block.5." + k]) for k in layer(src, "block.5."))
        check(worst < 1e-7 and no_lora and ends,
              f"--init {init}: shared layers as chosen (worst {worst:.1e}), prelude and coda the "
              f"first and last layers, no LoRA tensors")


def check_svd(work, source_run, src):
    out = os.path.join(work, "rank4")
    convert(source_run, out, "--init", "average", "--lora-rank", "4")
    got = weights(work, out, "rank4")
    worst = 0.0
    for loop in range(2):
        for j in range(2):
            for name in LINEARS:
                delta = src[f"block.{1 + 2 * loop + j}.{name}.weight"].astype(np.float64) - \
                    got[f"block.{j}.{name}.weight"]
                u, s, vt = np.linalg.svd(delta, full_matrices=False)
                best = (u[:, :4] * s[:4]) @ vt[:4]
                mine = got[f"block.{j}.{name}.lora.{loop}.B"].astype(np.float64) @ \
                    got[f"block.{j}.{name}.lora.{loop}.A"]
                worst = max(worst, float(np.max(np.abs(mine - best)) / np.max(np.abs(best))))
    check(worst < 1e-5, f"rank 4: every B·A is the best rank-4 approximation of W_l - W' "
                        f"(worst relative difference {worst:.1e})")


def check_fewer_loops(run, val):
    """A relaxed model (LoRA for its 2 iterations) samples and evaluates at fewer loops, and says
    why it cannot run more."""
    sample = loom("sample", run, "--loops", "1", "--tokens", "4", expect_ok=False)
    curve = loom("eval", run, "--data", val, "--loops", "1,2", "--batches", "1", expect_ok=False)
    more = loom("sample", run, "--loops", "3", "--tokens", "4", expect_ok=False)
    check(sample.returncode == 0 and curve.returncode == 0,
          f"sample and eval at fewer loops than model.loops: {(sample.stderr + curve.stderr)[:160]}")
    check(more.returncode != 0 and "loop_lora_rank" in more.stderr,
          f"more loops than the LoRA factors cover is refused: {more.stderr.strip()[:160]}")


def main():
    work = tempfile.mkdtemp(prefix="loom-convert-")
    try:
        rng = np.random.default_rng(8)
        train, val = os.path.join(work, "train_000000.bin"), os.path.join(work, "val_000000.bin")
        write_shard(train, rng.integers(0, 257, 20000).tolist())
        write_shard(val, rng.integers(0, 257, 8 * 32 + 1).tolist())
        config = os.path.join(work, "plain.textproto")
        with open(config, "w") as f:
            f.write(MODEL + f'data {{ train_shards: "{train}" val_shards: "{val}" }}\n'
                    "train { steps: 1 global_batch: 8 micro_batch: 8 seq_len: 32 eval_interval: 0 }\n"
                    "optim { lr: 1e-9 warmup_steps: 0 }\nlogging { sample_tokens: 0 }\n")
        source_run = os.path.join(work, "plain")
        loom("train", config, "--run-dir", source_run)
        src = weights(work, source_run, "plain")
        unshared = eval_loss(LOOM, source_run, val, 1)

        full = os.path.join(work, "full")
        convert(source_run, full, "--init", "stepwise", "--lora-rank", "32")
        looped = eval_loss(LOOM, full, val, 2)
        check(relative(looped, unshared) < 1e-5,
              f"full rank: the looped model's loss {looped:.7f} equals the unshared {unshared:.7f}")
        check_fewer_loops(full, val)
        check_inits(work, source_run, src)
        check_svd(work, source_run, src)

        trained = os.path.join(work, "trained-on")
        loom("train", os.path.join(full, "config.textproto"), "--init-from", full, "--run-dir",
             trained, "--set", "train.steps=3", "--set", "optim.lr=1e-3", "--set",
             "train.eval_interval=3")
        with open(os.path.join(trained, "train.log")) as f:
            log = f.read()
        check("initialised the weights from" in log and "done: 3 steps" in log,
              "training continues from the converted checkpoint (loom train --init-from)")

        bad = loom("convert", source_run, "--to-looped", "--prelude", "1", "--block-layers", "2",
                   "--loops", "3", "--coda", "1", "--output", os.path.join(work, "bad"),
                   expect_ok=False)
        check(bad.returncode != 0 and "= 8 layers, but the checkpoint's model has 6" in bad.stderr,
              f"a layer count that does not add up is refused: {bad.stderr.strip()[:140]}")
        again = loom("convert", full, "--to-looped", *SHAPE, "--output", os.path.join(work, "x"),
                     expect_ok=False)
        check(again.returncode != 0 and "looped already" in again.stderr,
              f"a looped source is refused: {again.stderr.strip()[:120]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
