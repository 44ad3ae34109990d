#!/usr/bin/python3
"""Hugging Face Llama import and export against an independent reference.

A small random Llama is written in the Hugging Face layout (config.json + model.safetensors;
and, a second time, as two BF16 shards with model.safetensors.index.json) by a float64 forward
written here after Hugging Face's modeling_llama (separate q/k/v/o, gate/up/down, repeat_kv,
rotate_half with inv_freq = theta^(-2d/hd), RMSNorm). Then:
  * `loom import` reads it; `loom eval` on a shard of known tokens gives loom's C++ loss, which
    must equal the reference's (1e-5 relative, fp32 against fp64);
  * `loom export --safetensors` of the imported checkpoint, loaded into tests/torch_ref's
    LoomModel, gives the reference's logits (1e-9: the same fp32 weights, both in fp64);
  * `loom export --hf` writes back the same tensors bit for bit and the same config values;
  * `loom train --init-from` continues from it (its first loss equals the import's loss on the
    same tokens), and a looped loom model exports unrolled, its loss unchanged (with relaxed
    recursion each iteration's W + B·A);
  * config.json fields loom cannot honour are refused, naming them.
Usage: check_hf_llama.py LOOM
"""

import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "torch_ref"))
import loom_torch  # noqa: E402
from recursion_common import check, finish, relative, run_loom, write_shard  # noqa: E402
import recursion_common  # noqa: E402

LOOM = sys.argv[1]
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 257,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
    "attention_dropout": 0.0, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 256,
    "transformers_version": "4.46.0", "pretraining_tp": 1, "use_cache": True,
    "initializer_range": 0.02, "is_llama_config": True, "rope_interleaved": False,
}
T, BATCH = 64, 16  # the imported run's train.seq_len and global_batch: one validation batch






def loom(*args, expect_ok=True):
    return run_loom(LOOM, *args, expect_ok=expect_ok)


def eval_loss_at(run_dir, shard, loops):
    return recursion_common.eval_loss(LOOM, run_dir, shard, loops)


def eval_loss(run_dir, shard):
    return eval_loss_at(run_dir, shard, 1)


def random_llama(seed):
    g = torch.Generator().manual_seed(seed)
    C, Fh, V = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = CONFIG["num_key_value_heads"] * C // CONFIG["num_attention_heads"]

    def normal(*shape, std=0.2):
        return (torch.randn(*shape, generator=g) * std).to(torch.float32)

    w = {"model.embed_tokens.weight": normal(V, C, std=1.0), "model.norm.weight": 1 + normal(C),
         "lm_head.weight": normal(V, C)}
    for i in range(CONFIG["num_hidden_layers"]):
        at = f"model.layers.{i}."
        w.update({at + "input_layernorm.weight": 1 + normal(C),
                  at + "post_attention_layernorm.weight": 1 + normal(C),
                  at + "self_attn.q_proj.weight": normal(C, C),
                  at + "self_attn.k_proj.weight": normal(kv, C),
                  at + "self_attn.v_proj.weight": normal(kv, C),
                  at + "self_attn.o_proj.weight": normal(C, C),
                  at + "mlp.gate_proj.weight": normal(Fh, C),
                  at + "mlp.up_proj.weight": normal(Fh, C),
                  at + "mlp.down_proj.weight": normal(C, Fh)})
    return w


def hf_logits(w, idx):
    """Hugging Face modeling_llama's forward in float64, from its own conventions."""
    cfg = CONFIG
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    C = cfg["hidden_size"]
    hd = C // H
    d = {k: v.to(torch.float64) for k, v in w.items()}

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]))

    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    B, Tn = idx.shape
    freqs = torch.arange(Tn, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    x = d["model.embed_tokens.weight"][idx]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, d[p + "input_layernorm.weight"])
        q = (h @ d[p + "self_attn.q_proj.weight"].T).view(B, Tn, H, hd).transpose(1, 2)
        k = (h @ d[p + "self_attn.k_proj.weight"].T).view(B, Tn, KV, hd).transpose(1, 2)
        v = (h @ d[p + "self_attn.v_proj.weight"].T).view(B, Tn, KV, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = (t.repeat_interleave(H // KV, dim=1) for t in (k, v))  # repeat_kv
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(~torch.ones(Tn, Tn, dtype=torch.bool).tril(), float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, Tn, C)
        x = x + a @ d[p + "self_attn.o_proj.weight"].T
        h = rms(x, d[p + "post_attention_layernorm.weight"])
        gate, up = h @ d[p + "mlp.gate_proj.weight"].T, h @ d[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ d[p + "mlp.down_proj.weight"].T
    return rms(x, d["model.norm.weight"]) @ d["lm_head.weight"].T


def write_hf(folder, w, shards=1, bf16=False):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    arrays = {k: v.numpy() for k, v in w.items()}
    if bf16:  # round to bf16 (nearest even) and store the upper halves
        bits = {k: a.view(np.uint32) for k, a in arrays.items()}
        arrays = {k: ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16) for k, b in bits.items()}
    if shards == 1:
        loom_torch.save_safetensors(os.path.join(folder, "model.safetensors"), arrays)
        return
    names = sorted(arrays)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: arrays[n] for n in names[s::shards]}
        save_half(os.path.join(folder, file), part) if bf16 else \
            loom_torch.save_safetensors(os.path.join(folder, file), part)
        weight_map.update({n: file for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def save_half(path, arrays):
    """safetensors with BF16 tensors given as uint16 arrays (numpy has no bfloat16)."""
    header, chunks, offset = {}, [], 0
    for name in sorted(arrays):
        raw = arrays[name].astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arrays[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(chunks))




def mean_loss(logits, tokens):
    """Mean cross-entropy of the validation batch: sequence i is tokens[i*T : i*T + T + 1]."""
    x = torch.stack([tokens[i * T: i * T + T] for i in range(BATCH)])
    y = torch.stack([tokens[i * T + 1: i * T + T + 1] for i in range(BATCH)])
    return F.cross_entropy(logits(x).reshape(-1, CONFIG["vocab_size"]), y.reshape(-1)).item()






def check_refusals(work, w):
    for key, value, says in (("rope_scaling", {"type": "linear", "factor": 2.0}, "rope_scaling"),
                             ("sliding_window", 4096, "sliding_window"),
                             ("rope_interleaved", True, "rope_interleaved"),
                             ("model_type", "mistral", "model_type"),
                             ("hidden_act", "gelu", "hidden_act"),
                             ("attention_bias", True, "attention_bias"),
                             ("vocab_size", 128256, "vocab_size")):
        folder = os.path.join(work, f"bad-{key}")
        write_hf(folder, w)
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        cfg[key] = value
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        done = loom("import", folder, "--output", os.path.join(work, f"out-{key}"), expect_ok=False)
        check(done.returncode != 0 and says in done.stderr and "config.json" in done.stderr,
              f"import refuses {key}={json.dumps(value)}: {done.stderr.strip()[:160]}")


def main():
    work = tempfile.mkdtemp(prefix="loom-hf-")
    try:
        w = random_llama(3)
        tokens = torch.randint(0, 257, (BATCH * T + 1,), generator=torch.Generator().manual_seed(4))
        shard = os.path.join(work, "val_000000.bin")
        write_shard(shard, tokens.tolist())
        ref_loss = mean_loss(lambda x: hf_logits(w, x), tokens)

        hf, run = os.path.join(work, "hf"), os.path.join(work, "imported")
        write_hf(hf, w)
        loom("import", hf, "--output", run)
        loss = eval_loss(run, shard)
        check(relative(loss, ref_loss) < 1e-5,
              f"imported model's loss {loss:.7f} vs the reference's {ref_loss:.7f}")

        exported = os.path.join(work, "loom.safetensors")
        loom("export", run, "--safetensors", exported)
        model_dict = {"vocab_size": 257, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 48,
                      "max_seq_len": 64, "norm": "RMSNORM", "norm_eps": 1e-5, "position": "ROTARY",
                      "rope_theta": 10000.0, "tie_embeddings": False, "prelude_layers": 0,
                      "block_layers": 2, "loops": 1, "coda_layers": 0, "input_injection": False,
                      "residual": "STANDARD", "mlp": "SWIGLU", "bias": False}
        model = loom_torch.LoomModel(model_dict, dtype=torch.float64)
        loom_torch.load_loom_weights(model, loom_torch.load_safetensors(exported))
        idx = tokens[: 2 * T].view(2, T)
        with torch.no_grad():
            diff = (model(idx)[0] - hf_logits(w, idx)).abs().max().item()
        check(diff < 1e-9, f"loom names in the PyTorch reference give the Hugging Face logits "
                           f"(max difference {diff:.2e})")

        back = os.path.join(work, "hf-back")
        loom("export", run, "--hf", back)
        again = loom_torch.load_safetensors(os.path.join(back, "model.safetensors"))
        same = set(again) == set(w) and all(np.array_equal(again[k], w[k].numpy()) for k in w)
        check(same, "export --hf writes every tensor back bit for bit, under the same names")
        with open(os.path.join(back, "config.json")) as f:
            cfg = json.load(f)
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias")
        check(all(cfg[k] == CONFIG[k] for k in keys) and
              abs(cfg["rms_norm_eps"] - 1e-5) < 1e-12 and cfg["rope_theta"] == 10000.0,
              "export --hf writes the same config.json values")

        sharded, run2 = os.path.join(work, "hf-bf16"), os.path.join(work, "imported-bf16")
        write_hf(sharded, w, shards=2, bf16=True)
        loom("import", sharded, "--output", run2)
        w16 = {k: torch.from_numpy(np.ascontiguousarray(
            (v.numpy().view(np.uint32) + 0x7FFF + ((v.numpy().view(np.uint32) >> 16) & 1))
            & 0xFFFF0000).view(np.float32)) for k, v in w.items()}
        ref16 = mean_loss(lambda x: hf_logits(w16, x), tokens)
        loss16 = eval_loss(run2, shard)
        check(relative(loss16, ref16) < 1e-5,
              f"two BF16 shards with their index: loss {loss16:.7f} vs {ref16:.7f}")

        check_init_from(work, run, shard, loss)
        check_looped_export(work, shard)
        check_refusals(work, w)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish()


def check_init_from(work, run, shard, loss):
    """loom train --init-from the import: its step-0 validation loss is the import's."""
    cfg_path = os.path.join(run, "config.textproto")
    train_dir = os.path.join(work, "trained")
    done = loom("train", cfg_path, "--init-from", run, "--run-dir", train_dir,
                "--set", f"data.train_shards={shard}", "--set", f"data.val_shards={shard}",
                "--set", "train.steps=2", "--set", "train.eval_interval=1",
                "--set", "train.eval_batches=1", "--set", "optim.lr=1e-9",
                "--set", "optim.warmup_steps=0", "--set", "logging.sample_tokens=0",
                "--set", "train.global_batch=16", "--set", "train.micro_batch=16")
    with open(os.path.join(train_dir, "metrics.jsonl")) as f:
        vals = [json.loads(line).get("val_loss") for line in f if "val_loss" in line]
    check(bool(vals) and relative(vals[0], loss) < 1e-5,
          f"train --init-from starts at the imported weights (val loss {vals[:1]} vs {loss:.7f})")
    check("initialised the weights from" in open(os.path.join(train_dir, "train.log")).read(),
          "train.log says where the weights came from")
    bad = loom("train", cfg_path, "--init-from", run, "--run-dir", os.path.join(work, "bad"),
               "--set", "model.d_mlp=64", expect_ok=False)
    check(bad.returncode != 0 and "model.d_mlp" in bad.stderr,
          f"--init-from with another model names the field: {bad.stderr.strip()[:160]}")


def check_looped_export(work, shard):
    """A looped loom model (prelude, a shared block run 3 times, coda) exports unrolled to 5
    Llama layers and imports back with the same loss; a GELU model is refused."""
    config = os.path.join(work, "looped.textproto")
    with open(config, "w") as f:
        f.write("model { vocab_size: 257 d_model: 32 n_heads: 4 n_kv_heads: 2 d_mlp: 48 "
                "max_seq_len: 64 prelude_layers: 1 block_layers: 1 loops: 3 coda_layers: 1 "
                "norm: RMSNORM position: ROTARY mlp: SWIGLU bias: false tie_embeddings: true }\n"
                f'data {{ train_shards: "{shard}" val_shards: "{shard}" }}\n'
                "train { steps: 2 global_batch: 16 micro_batch: 16 seq_len: 64 eval_interval: 0 }\n"
                "logging { sample_tokens: 0 }\n")
    for tag, sets, tol in (("looped", [], 1e-6),
                           ("relaxed", ["--set", "model.loop_lora_rank=4"], 1e-5)):
        looped = os.path.join(work, tag)
        loom("train", config, "--run-dir", looped, *sets)
        hf, back = os.path.join(work, f"{tag}-hf"), os.path.join(work, f"{tag}-back")
        loom("export", looped, "--hf", hf)
        with open(os.path.join(hf, "config.json")) as f:
            layers = json.load(f)["num_hidden_layers"]
        loom("import", hf, "--output", back)
        a, b = eval_loss_at(looped, shard, 3), eval_loss(back, shard)
        check(layers == 5 and relative(b, a) < tol,
              f"a {tag} model (1 + 1×3 + 1 layers, tied head) exports as {layers} layers"
              f"{' (W + B·A per iteration)' if sets else ''}; loss {a:.7f} looped, "
              f"{b:.7f} unrolled")
    gelu = os.path.join(work, "gelu")
    loom("train", config, "--run-dir", gelu, "--set", "model.mlp=GELU")
    done = loom("export", gelu, "--hf", os.path.join(work, "gelu-hf"), expect_ok=False)
    check(done.returncode != 0 and "model.mlp" in done.stderr,
          f"export --hf refuses a GELU model: {done.stderr.strip()[:120]}")




if __name__ == "__main__":
    sys.exit(main())
