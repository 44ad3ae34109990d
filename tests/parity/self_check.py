#!/usr/bin/python3
"""Tests check_parity.py without loom: torch plays the dump tool.

Two things are checked:
  1. The reference model against independent re-statements of the spec (a textbook pre-norm
     loop, the Ladder Residual sum, input injection, rotary as complex multiplication,
     Mixture-of-Recursions as masked attention over the whole sequence, its gradient against
     finite differences), so a slip in loom_torch.py is not simply copied into the fake dump
     and missed.
  2. check_parity.py end to end: a float32 torch run posing as loom must PASS against the
     float64 reference, and a dump perturbed just past tolerance, with a missing or misshapen
     tensor, with the wrong residual schedule, or from a tool that crashes, must FAIL.

Usage:
    self_check.py                          # run everything; exit 0 when every case behaves
    self_check.py CASE.json --out DIR      # (internal) act as the dump tool for one case
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "torch_ref"))
sys.path.insert(0, HERE)
import check_parity  # noqa: E402
import loom_torch  # noqa: E402

# Just past check_parity's default tolerance of 1e-4: a perturbation this small must still fail.
PERTURBATION = 3e-4

GPT2_LIKE = {
    "vocab_size": 67, "d_model": 32, "n_heads": 4, "d_mlp": 96, "max_seq_len": 24,
    "norm": "LAYERNORM", "norm_eps": 1e-5, "position": "LEARNED", "rope_theta": 10000.0,
    "tie_embeddings": False, "prelude_layers": 1, "block_layers": 1, "loops": 1,
    "coda_layers": 1, "input_injection": False, "residual": "STANDARD",
}
LOOPED_LADDER = dict(GPT2_LIKE, norm="RMSNORM", norm_eps=1e-6, position="ROTARY", tie_embeddings=True,
                     prelude_layers=1, block_layers=2, loops=3, coda_layers=1,
                     input_injection=True, residual="LADDER")
# Mixture-of-Recursions, as tests/parity/mor_expert.textproto and mor_token.textproto.
MOR_EXPERT = dict(GPT2_LIKE, vocab_size=64, d_mlp=48, max_seq_len=16, n_kv_heads=2, norm="RMSNORM",
                  norm_eps=1e-5, position="ROTARY", mlp="SWIGLU", bias=False, block_layers=2, loops=3,
                  recursion_router="EXPERT_CHOICE", recursion_aux_weight=0.1)
MOR_TOKEN = dict(GPT2_LIKE, vocab_size=64, d_mlp=48, max_seq_len=16, block_layers=2, loops=3,
                 recursion_router="TOKEN_CHOICE", recursion_gate_scale=0.5, recursion_aux_weight=0.1)
# tests/parity/mor_shared.textproto: expert choice, iterations 1 .. R-1 attend to iteration 0's keys/values.
MOR_SHARED = dict(MOR_EXPERT, recursion_kv="SHARED_FIRST", loop_lora_rank=2)
STEPS = 21  # the brief requires the losses at step 0 and step 20


def make_train(steps=STEPS):
    # Linear warm-up then decay, so a dump that ignores lr[s] would show in the losses.
    lr = [1e-3 * min(1.0, (s + 1) / 5) * (1.0 - 0.5 * s / steps) for s in range(steps)]
    return {"batch": 2, "seq_len": 16, "steps": steps, "lr": lr, "beta1": 0.9, "beta2": 0.95,
            "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0}


# ---------------------------------------------------------------------------------------------
# 1. The reference model against independent statements of the spec.

def _textbook_logits(model, idx, residual_delay):
    """Logits with the residual sum written out from its definition, not as a FIFO.

    Sub-layer i (0-based, counting attention and MLP separately over the unrolled list) reads
    x0 + (injections so far) + the outputs of sub-layers 0 .. i-delay; the final stream adds all.
    """
    cfg = model.config
    T = idx.shape[1]
    x0 = model.wte[idx] + (model.wpe[:T] if cfg["position"] == "LEARNED" else 0)
    rotary = None
    if cfg["position"] == "ROTARY":
        rotary = loom_torch.rotary_tables(T, cfg["d_model"] // cfg["n_heads"], cfg["rope_theta"], x0.dtype)
    outputs, injections, prelude_out = [], [], None
    for layer, iteration, index in model.unrolled_layers():
        if cfg["input_injection"] and index == 0:
            if iteration == 0:
                prelude_out = x0 + sum(outputs)
            else:
                injections.append(prelude_out)
        for branch in (lambda x: layer.attention_branch(x, rotary), layer.mlp_branch):
            visible = outputs[:max(0, len(outputs) - residual_delay + 1)]
            outputs.append(branch(x0 + sum(injections) + sum(visible)))
    final = x0 + sum(injections) + sum(outputs)
    head = model.wte if cfg["tie_embeddings"] else model.lm_head.weight
    return model.norm_f(final) @ head.t()


def _plain_gpt2_logits(model, idx):
    """The ordinary pre-norm transformer, x = x + attn(ln1(x)); x = x + mlp(ln2(x))."""
    T = idx.shape[1]
    x = model.wte[idx] + model.wpe[:T]
    for layer, _, _ in model.unrolled_layers():
        x = x + layer.attn(layer.norm1(x), None)
        x = x + layer.mlp(layer.norm2(x))
    return model.lm_head(model.norm_f(x))


def _rotary_by_complex(x, theta):
    """Rotate-half rotary as multiplication of (x[d] + i x[d + hd/2]) by exp(i t theta^(-2d/hd))."""
    T, hd = x.shape[-2], x.shape[-1]
    d = torch.arange(hd // 2, dtype=torch.float64)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2.0 * d / hd)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1)


def _masked_attention(layer, x, allowed, theta, iteration, kv=None):
    """layer.attn on the whole sequence x (T, C) with a (T, T) mask of allowed keys, rotary (when
    theta is given) as complex multiplication at positions 0 .. T-1. With kv = (k, v), each
    (H, T, hd), those replace the keys and values computed from x. Returns (output, (k, v))."""
    attn = layer.attn
    T, C = x.shape
    hd = C // attn.n_heads
    kv_width = attn.n_kv_heads * hd
    q, k, v = attn.qkv(layer.norm1(x), iteration).split([C, kv_width, kv_width], dim=-1)
    q = q.view(T, attn.n_heads, hd).transpose(0, 1)
    k, v = (t.view(T, attn.n_kv_heads, hd).transpose(0, 1) for t in (k, v))
    # Query head h reads key/value head h // group.
    heads = torch.arange(attn.n_heads) // (attn.n_heads // attn.n_kv_heads)
    k, v = k[heads], v[heads]
    if theta is not None:
        q, k = _rotary_by_complex(q, theta), _rotary_by_complex(k, theta)
    if kv is not None:
        k, v = kv
    scores = (q @ k.transpose(-2, -1)) / hd ** 0.5
    y = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
    return attn.proj(y.transpose(0, 1).reshape(T, C), iteration), (k, v)


def _mor_by_masking(model, idx):
    """Mixture-of-Recursions without gathering: iteration r runs the block on every token of the
    sequence with the keys limited to the selected ones (and itself, so that no row is empty),
    then keeps the update of the selected tokens only. With recursion_kv SHARED_FIRST the keys of
    every iteration are all earlier positions (causal), and after iteration 0 every block layer
    reads iteration 0's keys and values in place of its own. Returns (logits, aux)."""
    cfg = model.config
    shared = cfg["recursion_kv"] == "SHARED_FIRST"
    B, T = idx.shape
    R = cfg["loops"]
    theta = cfg["rope_theta"] if cfg["position"] == "ROTARY" else None
    x = model.wte[idx] + (model.wpe[:T] if cfg["position"] == "LEARNED" else 0)
    rotary = None if theta is None else loom_torch.rotary_tables(T, cfg["d_model"] // cfg["n_heads"],
                                                                 theta, x.dtype)
    for layer in model.prelude:
        x = x + layer.attention_branch(x, rotary)
        x = x + layer.mlp_branch(x)
    W = model.loop.router.weight
    alpha = float(np.float32(cfg["recursion_gate_scale"]))
    weight = float(np.float32(cfg["recursion_aux_weight"]))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    eye = torch.eye(T, dtype=torch.bool)
    if cfg["recursion_router"] == "TOKEN_CHOICE":
        probs = torch.softmax(torch.einsum("btc,rc->btr", x, W), dim=-1)
        best, depth = probs.max(dim=-1)  # torch's max: the first of equal maxima
        aux = weight * R * sum(float((depth == j).double().mean()) * probs[..., j].mean()
                               for j in range(R))
    else:
        capacity = ([float(np.float32(c)) for c in cfg["recursion_capacity"]]
                    or [(R - r) / R for r in range(R)])
        aux = 0.0
    rows = []
    for b in range(B):
        h = x[b]
        active = torch.ones(T, dtype=torch.bool)
        first_kv = []  # SHARED_FIRST: iteration 0's (k, v) by block layer
        for r in range(R):
            if cfg["recursion_router"] == "TOKEN_CHOICE":
                selected = depth[b] >= r
                gate = alpha * best[b]
            else:
                s = h @ W[r]
                k = min(int(capacity[r] * T + 1e-6), int(active.sum()))
                # Stable sort of -s over the active tokens: equal scores keep position order.
                order = torch.sort(torch.where(active, -s.detach(), float("inf")), stable=True)[1]
                selected = torch.zeros(T, dtype=torch.bool)
                selected[order[:k]] = True
                y = selected.to(s.dtype)
                # -(y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))), 1 - sigmoid(s) = sigmoid(-s).
                logsig = torch.nn.functional.logsigmoid
                bce = -(y * logsig(s) + (1 - y) * logsig(-s))
                aux = aux + (bce * active).sum()
                gate = alpha * torch.sigmoid(s)
                active = selected
            if shared and r == 0 and not bool(selected.all()):
                raise AssertionError("SHARED_FIRST: iteration 0 must run every token")
            allowed = causal if shared else causal & selected[None, :] | eye
            y = h
            for j, layer in enumerate(model.block):
                out, kv = _masked_attention(layer, y, allowed, theta, r,
                                            first_kv[j] if shared and r > 0 else None)
                if r == 0:
                    first_kv.append(kv)
                y = y + out
                y = y + layer.mlp_branch(y, r)
            h = h + torch.where(selected, gate, torch.zeros_like(gate))[:, None] * (y - h)
        rows.append(h)
    x = torch.stack(rows)
    if cfg["recursion_router"] == "EXPERT_CHOICE":
        aux = weight * aux / (B * T)
    for layer in model.coda:
        x = x + layer.attention_branch(x, rotary)
        x = x + layer.mlp_branch(x)
    head = model.wte if cfg["tie_embeddings"] else model.lm_head.weight
    return model.norm_f(x) @ head.t(), aux


class _Pinned:
    """Replaces loom_torch attributes for the duration of a with-block."""

    def __init__(self, **values):
        self.values = values

    def __enter__(self):
        self.saved = {name: getattr(loom_torch, name) for name in self.values}
        for name, value in self.values.items():
            setattr(loom_torch, name, value)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(loom_torch, name, value)


def _mor_model(cfg, generator, std=0.2):
    """A float64 MoR model with random weights, LoRA factors and norm gains (nothing at its
    neutral value) and a router scaled up so that depths and gates vary."""
    model = loom_torch.LoomModel(dict(cfg), dtype=torch.float64)
    loom_torch.init_normal(model, std=std, generator=generator)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim < 2 or ".lora." in name:
                param.add_(0.1 * torch.randn(param.shape, dtype=param.dtype, generator=generator))
        model.loop.router.weight.mul_(10.0)
    return model


def _objective(model, idx, targets):
    _, loss = model(idx, targets)
    return loss + model.aux_loss


def check_mor_semantics(generator, compare):
    """Mixture-of-Recursions: pinned to the plain loop, against the masked restatement (values
    and gradients), ties, and finite differences."""
    idx = torch.randint(0, 64, (3, 16), generator=generator)
    targets = torch.randint(0, 64, (3, 16), generator=generator)
    lora = dict(loop_lora_rank=2)

    def without_router(model, cfg):
        plain = loom_torch.LoomModel(dict(cfg, recursion_router="NONE", recursion_capacity=[]),
                                     dtype=torch.float64)
        loom_torch.load_loom_weights(plain, {name: p.detach().numpy() for name, p in
                                             model.named_parameters() if not name.startswith("loop.")})
        return plain

    with torch.no_grad():
        cfg = dict(MOR_EXPERT, recursion_capacity=[1.0, 1.0, 1.0], **lora)
        model = _mor_model(cfg, generator)
        with _Pinned(expert_gate=lambda s, alpha: torch.ones_like(s)):
            compare("MoR EXPERT gate 1, capacity 1 == plain loop", model(idx)[0],
                    without_router(model, cfg)(idx)[0])
        cfg = dict(MOR_TOKEN, **lora)
        model = _mor_model(cfg, generator)
        with _Pinned(token_gate=lambda p, alpha: torch.ones_like(p),
                     token_depths=lambda p: torch.full(p.shape[:-1], p.shape[-1] - 1, dtype=torch.long)):
            compare("MoR TOKEN gate 1, every depth R-1 == plain loop", model(idx)[0],
                    without_router(model, cfg)(idx)[0])

        # A zero router ties every score: expert choice keeps the first positions, token choice
        # gives every token depth 0 (so iterations 1 .. R-1 run nothing).
        for cfg, want in ((dict(MOR_EXPERT, recursion_capacity=[1.0, 0.5, 0.25]), (16, 8, 4)),
                          (MOR_TOKEN, (16, 0, 0))):
            model = _mor_model(cfg, generator)
            model.loop.router.weight.zero_()
            model(idx)
            wrong = sum(sel != tuple(range(want[r])) for _, r, sel in model.last_selection)
            compare(f"MoR {cfg['recursion_router']} zero router: ties to the lowest (wrong picks)",
                    torch.tensor(float(wrong)), torch.tensor(0.0))

    for name, cfg in (("EXPERT rotary SwiGLU GQA", dict(MOR_EXPERT, recursion_capacity=[0.9, 0.6, 0.3],
                                                        recursion_gate_scale=0.7, **lora)),
                      ("EXPERT learned GELU", dict(MOR_TOKEN, recursion_router="EXPERT_CHOICE",
                                                   recursion_gate_scale=1.0, **lora)),
                      ("TOKEN learned GELU", dict(MOR_TOKEN, **lora)),
                      ("TOKEN rotary SwiGLU GQA", dict(MOR_EXPERT, recursion_router="TOKEN_CHOICE",
                                                       recursion_gate_scale=0.5, **lora))):
        _check_mor_case(name, cfg, generator, compare, idx, targets)

    # recursion_kv SHARED_FIRST: iterations after the first attend to its keys and values.
    check_shared_kv_modes(generator, compare, idx)
    for name, cfg in (("EXPERT shared kv rotary GQA", dict(MOR_SHARED, recursion_capacity=[1.0, 0.6, 0.3],
                                                           recursion_gate_scale=0.7)),
                      ("TOKEN shared kv learned GELU", dict(MOR_TOKEN, recursion_kv="SHARED_FIRST", **lora))):
        _check_mor_case(name, cfg, generator, compare, idx, targets)


def _check_mor_case(name, cfg, generator, compare, idx, targets):
    """A random MoR model against the masked restatement (logits, aux, every gradient), and its
    gradient against central differences with the selection unmoved."""
    model = _mor_model(cfg, generator)
    logits, loss = model(idx, targets)
    (loss + model.aux_loss).backward()
    sizes = sorted({len(sel) for _, _, sel in model.last_selection})
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    masked_logits, masked_aux = _mor_by_masking(model, idx)
    compare(f"MoR {name} == masked restatement, logits", logits, masked_logits)
    compare(f"MoR {name} == masked restatement, aux", model.aux_loss, masked_aux)
    (torch.nn.functional.cross_entropy(masked_logits.reshape(-1, 64), targets.reshape(-1))
     + masked_aux).backward()
    worst = max(float((grads[n] - p.grad).abs().max()) for n, p in model.named_parameters())
    compare(f"MoR {name} == masked restatement, gradients (kept {sizes})", torch.tensor(worst),
            torch.tensor(0.0))

    # Central differences of the objective along random directions, the selection unmoved.
    selection = list(model.last_selection)
    params = list(model.parameters())
    worst = 0.0
    with torch.no_grad():
        for _ in range(3):
            direction = [torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in params]
            slope = sum(float((g * d).sum()) for g, d in zip(grads.values(), direction))
            values = []
            for sign in (1.0, -1.0):
                for p, d in zip(params, direction):
                    p.add_(sign * 1e-6 * d)
                values.append(float(_objective(model, idx, targets)))
                if model.last_selection != selection:
                    worst = float("inf")  # the selection moved: the check means nothing
                for p, d in zip(params, direction):
                    p.sub_(sign * 1e-6 * d)
            worst = max(worst, abs((values[0] - values[1]) / 2e-6 - slope) / abs(slope))
    compare(f"MoR {name} gradient == finite differences (rel)", torch.tensor(worst),
            torch.tensor(0.0), tol=1e-6)


def check_shared_kv_modes(generator, compare, idx):
    """recursion_kv SHARED_FIRST against RECURSION_WISE: the same with one iteration; with every
    iteration running every token, the same once attention's output is zeroed and different
    while it is not; refused where iteration 0 would not run every token."""

    def both_modes(cfg):
        wise = _mor_model(dict(cfg, recursion_kv="RECURSION_WISE"), generator)
        shared = loom_torch.LoomModel(dict(cfg, recursion_kv="SHARED_FIRST"), dtype=torch.float64)
        loom_torch.load_loom_weights(shared, {n: p.detach().numpy() for n, p in wise.named_parameters()})
        return wise, shared

    with torch.no_grad():
        for cfg in (dict(MOR_SHARED, loops=1, recursion_capacity=[]),
                    dict(MOR_TOKEN, loops=1, loop_lora_rank=2)):
            wise, shared = both_modes(cfg)
            compare(f"MoR {cfg['recursion_router']} loops 1: SHARED_FIRST == RECURSION_WISE",
                    shared(idx)[0], wise(idx)[0], tol=0.0)

        wise, shared = both_modes(dict(MOR_SHARED, recursion_capacity=[1.0, 1.0, 1.0]))
        apart = float((shared(idx)[0] - wise(idx)[0]).abs().max())
        compare("MoR capacity 1: SHARED_FIRST changes the logits (0 = yes)",
                torch.tensor(float(apart < 1e-3)), torch.tensor(0.0))
        for model in (wise, shared):
            for layer in model.block:
                layer.attn.proj.weight.zero_()
                for factors in layer.attn.proj.lora:
                    factors.B.zero_()
        compare("MoR capacity 1, attention output 0: SHARED_FIRST == RECURSION_WISE",
                shared(idx)[0], wise(idx)[0])

    refused = 0
    for bad in (dict(MOR_SHARED, recursion_capacity=[0.9, 0.6, 0.3]),
                dict(MOR_SHARED, recursion_capacity=[1.0 - 2 ** -20, 0.5, 0.25]),
                dict(MOR_SHARED, recursion_router="NONE", loop_lora_rank=0)):
        try:
            loom_torch.LoomModel(dict(bad), dtype=torch.float64)
        except ValueError:
            refused += 1
    compare("MoR SHARED_FIRST, iteration 0 not every token: refused (of 3)",
            torch.tensor(float(refused)), torch.tensor(3.0))


def check_model_semantics():
    """Returns a list of (name, max abs difference, ok)."""
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, GPT2_LIKE["vocab_size"], (2, 12), generator=generator)
    results = []

    def compare(name, a, b, tol=1e-12):
        diff = float((a - b).abs().max())
        results.append((name, diff, diff <= tol))

    with torch.no_grad():
        gpt2 = loom_torch.LoomModel(dict(GPT2_LIKE, loops=2), dtype=torch.float64)
        loom_torch.init_normal(gpt2, generator=generator)
        compare("STANDARD == textbook pre-norm GPT-2", gpt2(idx)[0], _plain_gpt2_logits(gpt2, idx))

        for residual, delay in (("STANDARD", 1), ("LADDER", 2)):
            for injection in (False, True):
                cfg = dict(LOOPED_LADDER, residual=residual, input_injection=injection)
                model = loom_torch.LoomModel(cfg, dtype=torch.float64)
                loom_torch.init_normal(model, std=0.2, generator=generator)
                compare(f"{residual} injection={injection} == residual written as a sum",
                        model(idx)[0], _textbook_logits(model, idx, delay))

        x = torch.randn(2, 3, 12, 8, dtype=torch.float64, generator=generator)
        cos, sin = loom_torch.rotary_tables(12, 8, 500.0, torch.float64)
        compare("rotary == complex multiplication", loom_torch.apply_rotary(x, cos, sin),
                _rotary_by_complex(x, 500.0))
    check_mor_semantics(generator, compare)
    return results


# ---------------------------------------------------------------------------------------------
# 2. check_parity.py end to end, torch posing as the dump tool.

def write_fake_dump(case, out_dir):
    """What loom's dump tool would write, computed by torch in float32, then perturbed."""
    model_dict, train = case["model"], case["train"]
    if case.get("fail_tool"):
        print("fake dump tool: simulated crash while building the model", file=sys.stderr)
        sys.exit(3)
    os.makedirs(out_dir, exist_ok=True)
    generator = torch.Generator().manual_seed(case.get("seed", 0))
    model = loom_torch.LoomModel(model_dict, dtype=torch.float32)
    loom_torch.init_normal(model, generator=generator)
    init = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    S, B, T = train["steps"], train["batch"], train["seq_len"]
    tokens = torch.randint(0, model_dict["vocab_size"], (S, B, T + 1), generator=generator)
    tokens = tokens.numpy().astype("<i4")

    # The run itself may use a different model than model.json says: a "loom" with a bug.
    run_model = dict(model_dict, **case.get("run_model_overrides", {}))
    losses, grads0 = check_parity.reference_run(run_model, train, init, tokens.astype(np.int64),
                                                dtype=torch.float32)
    perturb = case.get("perturb", {})
    if "grad_scale" in perturb:
        grads0[perturb["grad_scale"]] *= 1 + PERTURBATION
    if "loss_step" in perturb:
        losses[perturb["loss_step"]] *= 1 + PERTURBATION
    if "drop_grad" in perturb:
        del grads0[perturb["drop_grad"]]
    if "transpose_init" in perturb:
        init[perturb["transpose_init"]] = init[perturb["transpose_init"]].T.copy()

    with open(os.path.join(out_dir, "model.json"), "w") as file:
        json.dump(model_dict, file)
    with open(os.path.join(out_dir, "train.json"), "w") as file:
        json.dump(train, file)
    loom_torch.save_safetensors(os.path.join(out_dir, "init.safetensors"), init)
    loom_torch.save_safetensors(os.path.join(out_dir, "grads0.safetensors"), grads0)
    tokens.tofile(os.path.join(out_dir, "tokens.bin"))
    with open(os.path.join(out_dir, "losses.txt"), "w") as file:
        file.writelines(f"{loss:.9g}\n" for loss in losses)


def parity_cases():
    """(name, case, expected exit status, text the output must contain)."""
    looped = {"model": LOOPED_LADDER, "train": make_train()}
    no_clip = {"model": GPT2_LIKE, "train": dict(make_train(), grad_clip=0.0)}
    mor_expert = {"model": MOR_EXPERT, "train": make_train()}
    mor_token = {"model": MOR_TOKEN, "train": make_train()}
    mor_shared = {"model": MOR_SHARED, "train": make_train()}
    return [
        ("GPT-2-like, float32 vs float64", {"model": GPT2_LIKE, "train": make_train()}, 0, "parity PASS"),
        ("GPT-2-like, no clipping", no_clip, 0, "parity PASS"),
        ("looped ladder rotary tied, float32", looped, 0, "parity PASS"),
        ("one gradient off by 3e-4", dict(looped, perturb={"grad_scale": "block.1.mlp.fc.weight"}),
         1, "block.1.mlp.fc.weight"),
        ("loss at step 20 off by 3e-4", dict(looped, perturb={"loss_step": 20}), 1, "step 20"),
        ("gradient missing", dict(looped, perturb={"drop_grad": "coda.0.norm2.weight"}),
         1, "missing coda.0.norm2.weight"),
        ("init tensor misshapen", dict(looped, perturb={"transpose_init": "block.0.mlp.fc.weight"}),
         1, "block.0.mlp.fc.weight has shape"),
        ("loom ran STANDARD, said LADDER", dict(looped, run_model_overrides={"residual": "STANDARD"}),
         1, "parity FAIL"),
        ("loom skipped input injection", dict(looped, run_model_overrides={"input_injection": False}),
         1, "parity FAIL"),
        ("loom used norm_eps 1e-3, not 1e-5", {"model": GPT2_LIKE, "train": make_train(),
                                              "run_model_overrides": {"norm_eps": 1e-3}}, 1, "parity FAIL"),
        ("dump tool crashes", dict(looped, fail_tool=True), 2, "simulated crash"),
        ("MoR expert choice, float32", mor_expert, 0, "parity PASS"),
        ("MoR token choice, float32", mor_token, 0, "parity PASS"),
        ("loom left out the MoR aux loss", dict(mor_expert, run_model_overrides={"recursion_aux_weight": 0.0}),
         1, "loop.router.weight"),
        ("loom ignored MoR gate scale 0.5", dict(mor_token, run_model_overrides={"recursion_gate_scale": 1.0}),
         1, "parity FAIL"),
        ("loom ran MoR capacity 1, 1/2, 1/4",
         dict(mor_expert, run_model_overrides={"recursion_capacity": [1.0, 0.5, 0.25]}), 1, "parity FAIL"),
        ("MoR shared key/values, float32", mor_shared, 0, "parity PASS"),
        ("loom ran RECURSION_WISE, said SHARED_FIRST",
         dict(mor_shared, run_model_overrides={"recursion_kv": "RECURSION_WISE"}), 1, "parity FAIL"),
    ]


def run_parity_case(case, work_dir, index):
    case_path = os.path.join(work_dir, f"case{index}.json")
    with open(case_path, "w") as file:
        json.dump(case, file)
    # check_parity runs the tool as a plain executable; this wrapper makes us that executable.
    tool = os.path.join(work_dir, "fake_dump_tool")
    with open(tool, "w") as file:
        file.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" "$@"\n')
    os.chmod(tool, 0o755)
    done = subprocess.run([sys.executable, os.path.join(HERE, "check_parity.py"),
                           "--dump-tool", tool, "--config", case_path],
                          capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", nargs="?", help="(internal) case JSON; with --out, act as the dump tool")
    parser.add_argument("--out", help="(internal) dump directory")
    parser.add_argument("--verbose", action="store_true", help="print check_parity's full output")
    args = parser.parse_args()
    if args.case:
        with open(args.case) as file:
            write_fake_dump(json.load(file), args.out)
        return 0

    all_ok = True
    print("reference model vs independent statements of the spec:")
    for name, diff, ok in check_model_semantics():
        all_ok &= ok
        print(f"  {'ok  ' if ok else 'FAIL'}  {name:<54} max |diff| {diff:.1e}")

    print("check_parity.py with torch float32 posing as loom:")
    with tempfile.TemporaryDirectory(prefix="loom_self_check_") as work_dir:
        for index, (name, case, expected_status, expected_text) in enumerate(parity_cases()):
            status, output = run_parity_case(case, work_dir, index)
            ok = status == expected_status and expected_text in output
            all_ok &= ok
            summary = [line for line in output.splitlines() if line.startswith("parity")]
            print(f"  {'ok  ' if ok else 'FAIL'}  {name:<36} exit {status} (want {expected_status})  "
                  f"{summary[-1] if summary else ''}")
            if args.verbose or not ok:
                print("      " + output.rstrip().replace("\n", "\n      "))
    print("self check " + ("PASS" if all_ok else "FAIL"))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
