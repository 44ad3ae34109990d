"""PyTorch reference for loom's model, and a hand-written safetensors reader/writer.

This is the other half of loom's parity test (tests/parity/check_parity.py) and of its
step-time benchmark (tests/bench/bench_step.py). The module's parameter names ARE loom's
names (`wte`, `block.0.attn.qkv.weight`, ...), so moving weights and gradients between the
two needs no translation table.

Invariants:
  * Built from the model dict that loom writes as model.json; every key is required.
  * The residual schedule (delay 1 = STANDARD, delay 2 = LADDER, optional input injection)
    follows the pseudocode in loom's parity brief literally; see LoomModel.forward.
  * Shared block weights are the same nn.Module on every loop iteration, so autograd sums
    their gradients over iterations exactly as loom must.
  * Mixture-of-Recursions (recursion_router EXPERT_CHOICE / TOKEN_CHOICE) runs each loop
    iteration on the gathered tokens of one sequence at a time; see LoomModel._routed_forward.
    With recursion_kv SHARED_FIRST the later iterations attend to the first one's keys/values.
    Its auxiliary objective is left in model.aux_loss (0 without a router): the loss to
    backpropagate is loss + model.aux_loss, the loss to report is loss alone.

Usage:
    model = LoomModel(json.load(open("model.json")), dtype=torch.float64)
    load_loom_weights(model, load_safetensors("init.safetensors"))
    logits, loss = model(idx, targets); (loss + model.aux_loss).backward()
    grads = loom_gradients(model)
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MODEL_KEYS = (
    "vocab_size", "d_model", "n_heads", "d_mlp", "max_seq_len", "norm", "norm_eps",
    "position", "rope_theta", "tie_embeddings", "prelude_layers", "block_layers", "loops",
    "coda_layers", "input_injection", "residual",
)
# Keys a model dict may leave out (dicts written before they existed), with their defaults.
OPTIONAL_KEYS = {
    "mlp": "GELU", "n_kv_heads": 0, "bias": True, "loop_lora_rank": 0,
    # Mixture-of-Recursions. recursion_capacity empty = (R - r) / R for iteration r of R.
    "recursion_router": "NONE", "recursion_capacity": [], "recursion_gate_scale": 1.0,
    "recursion_aux_weight": 0.01, "recursion_kv": "RECURSION_WISE",
}
_CHOICES = {
    "norm": ("LAYERNORM", "RMSNORM"),
    "position": ("LEARNED", "ROTARY"),
    "residual": ("STANDARD", "LADDER"),
    "mlp": ("GELU", "SWIGLU"),
    "recursion_router": ("NONE", "EXPERT_CHOICE", "TOKEN_CHOICE"),
    # RECURSION_WISE: an iteration's tokens attend among themselves. SHARED_FIRST: iterations
    # after the first attend to the first iteration's keys and values of the whole sequence.
    "recursion_kv": ("RECURSION_WISE", "SHARED_FIRST"),
}
# How many sub-layer outputs may wait before being added to the stream.
_RESIDUAL_DELAY = {"STANDARD": 1, "LADDER": 2}


def validate_model_dict(model):
    """Raises ValueError naming the first problem in a model dict."""
    missing = [key for key in MODEL_KEYS if key not in model]
    if missing:
        raise ValueError(f"model dict is missing keys {missing}")
    for key, default in OPTIONAL_KEYS.items():
        model.setdefault(key, list(default) if isinstance(default, list) else default)
    for key, allowed in _CHOICES.items():
        if model[key] not in allowed:
            raise ValueError(f"model.{key} = {model[key]!r}; expected one of {allowed}")
    for key in ("vocab_size", "d_model", "n_heads", "d_mlp", "max_seq_len"):
        if int(model[key]) <= 0:
            raise ValueError(f"model.{key} = {model[key]} must be positive")
    for key in ("prelude_layers", "block_layers", "loops", "coda_layers"):
        if int(model[key]) < 0:
            raise ValueError(f"model.{key} = {model[key]} must be >= 0")
    if model["d_model"] % model["n_heads"] != 0:
        raise ValueError(f"d_model {model['d_model']} is not divisible by n_heads {model['n_heads']}")
    kv_heads = int(model["n_kv_heads"])
    if kv_heads < 0 or (kv_heads > 0 and model["n_heads"] % kv_heads != 0):
        raise ValueError(f"n_kv_heads {kv_heads} does not divide n_heads {model['n_heads']}")
    head_dim = model["d_model"] // model["n_heads"]
    if model["position"] == "ROTARY" and head_dim % 2 != 0:
        raise ValueError(f"ROTARY needs an even head dim; d_model/n_heads = {head_dim}")
    if model["recursion_router"] != "NONE":
        _validate_router(model)
    elif model["recursion_kv"] != "RECURSION_WISE":
        raise ValueError(f"model.recursion_kv {model['recursion_kv']} needs a recursion_router")


def _validate_router(model):
    """Routing is defined only for a plain loop: STANDARD residual, no input injection,
    backprop through every iteration (backprop_loops 0 or >= loops). Anything else is refused
    rather than guessed at."""
    router = model["recursion_router"]
    if int(model["loops"]) < 1:
        raise ValueError(f"recursion_router {router} needs loops >= 1, not {model['loops']}")
    if model["residual"] != "STANDARD":
        raise ValueError(f"recursion_router {router} is defined for residual STANDARD only, "
                         f"not {model['residual']}")
    if model["input_injection"]:
        raise ValueError(f"recursion_router {router} is not defined with input_injection")
    if 0 < int(model.get("backprop_loops", 0)) < int(model["loops"]):
        raise ValueError(f"recursion_router {router} is not defined with truncated backprop "
                         f"(backprop_loops {model['backprop_loops']} < loops {model['loops']})")
    for key in ("recursion_gate_scale", "recursion_aux_weight"):
        if not math.isfinite(float(model[key])):
            raise ValueError(f"model.{key} = {model[key]} is not finite")
    capacity = model["recursion_capacity"]
    if not isinstance(capacity, list):
        raise ValueError(f"model.recursion_capacity = {capacity!r} is not a list")
    if router == "EXPERT_CHOICE" and capacity:
        if len(capacity) != int(model["loops"]):
            raise ValueError(f"model.recursion_capacity has {len(capacity)} values for "
                             f"{model['loops']} loops")
        for value in capacity:
            if not (math.isfinite(float(value)) and float(value) >= 0.0):
                raise ValueError(f"model.recursion_capacity value {value} must be finite and >= 0")
    if model["recursion_kv"] == "SHARED_FIRST" and router == "EXPERT_CHOICE":
        # The first iteration must run every token: k_0 = T for every T <= max_seq_len, which
        # (k_0 = floor(c_0 T + 1e-6) falls behind T as T grows) is k_0 = T at max_seq_len.
        T = int(model["max_seq_len"])
        c0 = recursion_capacities(model)[0]
        if expert_capacity(c0, T, T) != T:
            raise ValueError(f"recursion_kv SHARED_FIRST needs the first iteration to run every "
                             f"token; recursion_capacity[0] = {c0} keeps "
                             f"{expert_capacity(c0, T, T)} of {T}")


def _float32(value):
    """A config value as loom holds it (proto float), widened exactly to a Python float."""
    return float(np.float32(value))


def recursion_capacities(model):
    """c_r for r = 0 .. loops-1: the configured values rounded to float32, or else the default
    (R - r) / R, computed in float64."""
    R = int(model["loops"])
    if model["recursion_capacity"]:
        return [_float32(value) for value in model["recursion_capacity"]]
    return [(R - r) / R for r in range(R)]


def expert_capacity(capacity, seq_len, active):
    """k_r = min(floor(c_r * T + 1e-6), |A_r|), with c_r * T in float64."""
    return min(int(math.floor(capacity * seq_len + 1e-6)), active)


def expert_gate(scores, alpha):
    """EXPERT_CHOICE gate of the chosen tokens: alpha * sigmoid(s_t). (A module-level function
    so a test can pin it.)"""
    return alpha * torch.sigmoid(scores)


def token_depths(probs):
    """TOKEN_CHOICE depth j_t = argmax_j p_t[j] of probs (..., R), as int64; numpy's argmax
    returns the first maximum, so ties go to the lowest depth."""
    return torch.from_numpy(np.argmax(probs.detach().cpu().numpy(), axis=-1)).long()


def token_gate(probability, alpha):
    """TOKEN_CHOICE gate: alpha * p_t[j_t], the router's probability of the chosen depth."""
    return alpha * probability


# ---------------------------------------------------------------------------------------------
# safetensors, by hand: u64 LE header length, JSON header, raw little-endian data.

_NUMPY_DTYPE = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_SAFETENSORS_DTYPE = {np.dtype(code).newbyteorder("<"): name for name, code in _NUMPY_DTYPE.items()}


def load_safetensors(path):
    """Returns {name: np.ndarray} from a .safetensors file. BF16 is widened to float32."""
    with open(path, "rb") as file:
        blob = file.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: {len(blob)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    data = memoryview(blob)[8 + header_len:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(int(n) for n in info["shape"])
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{path}: tensor {name} offsets [{begin}, {end}) outside data of {len(data)} bytes")
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            # numpy has no bfloat16: it is the top half of a float32.
            halves = np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint32) << 16
            array = halves.view(np.float32)
        elif info["dtype"] in _NUMPY_DTYPE:
            dtype = np.dtype(_NUMPY_DTYPE[info["dtype"]])
            if end - begin != count * dtype.itemsize:
                raise ValueError(f"{path}: tensor {name} has {end - begin} bytes; shape {shape} "
                                 f"of {info['dtype']} needs {count * dtype.itemsize}")
            array = np.frombuffer(raw, dtype=dtype, count=count)
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        tensors[name] = array.reshape(shape).astype(array.dtype.newbyteorder("="), copy=True)
    return tensors


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: np.ndarray} (any numpy dtype safetensors knows) to path."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])  # not ascontiguousarray: it turns 0-d into 1-d
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        if little.dtype not in _SAFETENSORS_DTYPE:
            raise ValueError(f"tensor {name}: numpy dtype {array.dtype} has no safetensors name")
        raw = little.tobytes(order="C")
        header[name] = {
            "dtype": _SAFETENSORS_DTYPE[little.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for raw in chunks:
            file.write(raw)


# ---------------------------------------------------------------------------------------------
# The model.

class RMSNorm(nn.Module):
    def __init__(self, channels, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, dtype=dtype))

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(model, dtype):
    if model["norm"] == "LAYERNORM":
        return nn.LayerNorm(model["d_model"], eps=model["norm_eps"], dtype=dtype)
    return RMSNorm(model["d_model"], model["norm_eps"], dtype)


def rotary_tables(seq_len, head_dim, theta, dtype):
    """cos and sin of angle t * theta^(-2d/head_dim), each (T, head_dim/2)."""
    # Angles in float64 whatever the model dtype: for float32 models this is the best loom can do.
    d = torch.arange(head_dim // 2, dtype=torch.float64)
    inverse_frequency = float(theta) ** (-2.0 * d / head_dim)
    angle = torch.arange(seq_len, dtype=torch.float64)[:, None] * inverse_frequency[None, :]
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def apply_rotary(x, cos, sin):
    """GPT-NeoX rotate-half on x (B, H, T, hd): pairs channel d with d + hd/2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def kv_heads(model):
    return model["n_kv_heads"] or model["n_heads"]


class LoraFactors(nn.Module):
    """One loop iteration's low-rank delta of a linear layer: A (r, in), B (out, r)."""

    def __init__(self, rank, fan_in, fan_out, dtype):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, fan_in, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(fan_out, rank, dtype=dtype))


class LoopLinear(nn.Linear):
    """nn.Linear with relaxed recursion's per-iteration deltas: y = W x + b + B_l A_l x at loop
    iteration l (`loops` of them when `rank` > 0, and only for layers of the shared block)."""

    def __init__(self, fan_in, fan_out, bias, dtype, rank=0, loops=0):
        super().__init__(fan_in, fan_out, bias=bias, dtype=dtype)
        self.lora = nn.ModuleList(LoraFactors(rank, fan_in, fan_out, dtype)
                                  for _ in range(loops if rank > 0 else 0))

    def forward(self, x, iteration=None):
        y = super().forward(x)
        if iteration is not None and len(self.lora) > 0:
            f = self.lora[iteration]
            y = y + (x @ f.A.t()) @ f.B.t()
        return y


class Attention(nn.Module):
    """Causal attention; with n_kv_heads < n_heads grouped-query: qkv's rows are q (C), k and v
    (n_kv_heads · hd each), and query head h reads key/value head h // (n_heads / n_kv_heads)."""

    def __init__(self, model, dtype, looped=False):
        super().__init__()
        channels = model["d_model"]
        self.n_heads = model["n_heads"]
        self.n_kv_heads = kv_heads(model)
        kv_width = self.n_kv_heads * (channels // self.n_heads)
        lora = lora_shape(model, looped)
        self.qkv = LoopLinear(channels, channels + 2 * kv_width, model["bias"], dtype, *lora)
        self.proj = LoopLinear(channels, channels, model["bias"], dtype, *lora)

    def forward(self, a, rotary, iteration=None):  # a (B, T, C); rotary None or (cos, sin)
        T = a.shape[1]
        q, k, v = self.project(a, rotary, iteration)
        return self.attend(q, k, v, torch.ones(T, T, dtype=torch.bool).tril(), iteration)

    def project(self, a, rotary, iteration=None):
        """q, k, v (B, H, T, hd) of a (B, T, C): k and v already repeated to the H query heads
        (grouped-query), rotary applied to q and k."""
        B, T, C = a.shape
        head_dim = C // self.n_heads
        kv_width = self.n_kv_heads * head_dim
        q, k, v = self.qkv(a, iteration).split([C, kv_width, kv_width], dim=-1)
        q = q.view(B, T, self.n_heads, head_dim).transpose(1, 2)
        k, v = (t.view(B, T, self.n_kv_heads, head_dim).transpose(1, 2) for t in (k, v))
        group = self.n_heads // self.n_kv_heads
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        if rotary is not None:
            q = apply_rotary(q, *rotary)
            k = apply_rotary(k, *rotary)
        return q, k, v

    def attend(self, q, k, v, allowed, iteration=None):
        """proj of softmax(q k^T / sqrt(hd), keys limited to allowed (Tq, Tk) bool) v:
        q (B, H, Tq, hd), k and v (B, H, Tk, hd). Returns (B, Tq, C)."""
        B, H, T, head_dim = q.shape
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)  # (B, H, Tq, Tk)
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v  # (B, H, Tq, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * head_dim), iteration)


class Mlp(nn.Module):
    """GELU: proj(gelu(fc(x))). SWIGLU: fc's rows are gate then up, proj(silu(gate) * up)."""

    def __init__(self, model, dtype, looped=False):
        super().__init__()
        self.swiglu = model["mlp"] == "SWIGLU"
        hidden = model["d_mlp"]
        lora = lora_shape(model, looped)
        self.fc = LoopLinear(model["d_model"], 2 * hidden if self.swiglu else hidden,
                             model["bias"], dtype, *lora)
        self.gelu = nn.GELU(approximate="tanh")
        self.proj = LoopLinear(hidden, model["d_model"], model["bias"], dtype, *lora)

    def forward(self, m, iteration=None):  # (B, T, C) -> (B, T, C)
        if self.swiglu:
            gate, up = self.fc(m, iteration).chunk(2, dim=-1)
            return self.proj(F.silu(gate) * up, iteration)
        return self.proj(self.gelu(self.fc(m, iteration)), iteration)


def lora_shape(model, looped):
    """(rank, loops) of the per-iteration deltas of a layer: none outside the shared block."""
    return (model["loop_lora_rank"], model["loops"]) if looped else (0, 0)


class Layer(nn.Module):
    """One transformer layer as two residual branches; LoomModel decides when they are added."""

    def __init__(self, model, dtype, looped=False):
        super().__init__()
        self.norm1 = make_norm(model, dtype)
        self.attn = Attention(model, dtype, looped)
        self.norm2 = make_norm(model, dtype)
        self.mlp = Mlp(model, dtype, looped)

    def attention_branch(self, x, rotary, iteration=None):
        return self.attn(self.norm1(x), rotary, iteration)

    def mlp_branch(self, x, iteration=None):
        return self.mlp(self.norm2(x), iteration)


class LoomModel(nn.Module):
    def __init__(self, model, dtype=torch.float32):
        super().__init__()
        validate_model_dict(model)
        self.config = dict(model)
        V, C = model["vocab_size"], model["d_model"]
        self.wte = nn.Parameter(torch.zeros(V, C, dtype=dtype))
        if model["position"] == "LEARNED":
            self.wpe = nn.Parameter(torch.zeros(model["max_seq_len"], C, dtype=dtype))
        self.prelude = nn.ModuleList(Layer(model, dtype) for _ in range(model["prelude_layers"]))
        self.block = nn.ModuleList(Layer(model, dtype, looped=True)
                                   for _ in range(model["block_layers"]))
        self.coda = nn.ModuleList(Layer(model, dtype) for _ in range(model["coda_layers"]))
        self.norm_f = make_norm(model, dtype)
        if not model["tie_embeddings"]:
            self.lm_head = nn.Linear(C, V, bias=False, dtype=dtype)
        if model["recursion_router"] != "NONE":
            # "loop.router.weight", (loops, d_model): row r scores tokens for iteration r
            # (EXPERT_CHOICE); the whole matrix gives a token's logits over depths (TOKEN_CHOICE).
            self.loop = nn.Module()
            self.loop.router = nn.Linear(C, model["loops"], bias=False, dtype=dtype)
        self.aux_loss = 0.0
        self.last_selection = []

    def unrolled_layers(self):
        """Yields (layer, block_iteration, block_index); both None outside the looped block."""
        for layer in self.prelude:
            yield layer, None, None
        for iteration in range(self.config["loops"]):
            for index, layer in enumerate(self.block):
                yield layer, iteration, index
        for layer in self.coda:
            yield layer, None, None

    def forward(self, idx, targets=None):
        """idx, targets (B, T) int64. Returns logits (B, T, V) and the mean loss (or None).

        Also sets self.aux_loss: the router's auxiliary objective (a 0-d tensor), or 0.0 without
        a router. It is part of the objective to backpropagate, not of the returned loss."""
        cfg = self.config
        T = idx.shape[1]
        if T > cfg["max_seq_len"]:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {cfg['max_seq_len']}")
        stream = self.wte[idx]  # (B, T, C)
        rotary = None
        if cfg["position"] == "LEARNED":
            stream = stream + self.wpe[:T]
        else:
            head_dim = cfg["d_model"] // cfg["n_heads"]
            rotary = rotary_tables(T, head_dim, cfg["rope_theta"], stream.dtype)

        self.aux_loss = 0.0
        self.last_selection = []
        if cfg["recursion_router"] != "NONE":
            stream = self._routed_forward(stream, rotary)
        else:
            stream = self._unrouted_forward(stream, rotary)

        head = self.wte if cfg["tie_embeddings"] else self.lm_head.weight
        logits = self.norm_f(stream) @ head.t()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def _unrouted_forward(self, stream, rotary):
        """Every layer of the unrolled list on the whole stream, with the residual schedule."""
        cfg = self.config
        delay = _RESIDUAL_DELAY[cfg["residual"]]
        pending = []  # sub-layer outputs not yet added to the stream, oldest first
        injected = None
        # Truncated backprop: the state entering iteration `cut` is a constant (stop-gradient);
        # the injected prelude output keeps its gradient through the later iterations.
        kept = int(cfg.get("backprop_loops", 0))
        cut = cfg["loops"] - kept if 0 < kept < cfg["loops"] else 0
        for layer, iteration, index in self.unrolled_layers():
            if cut and iteration == cut and index == 0:
                stream = stream.detach()
                pending = [p.detach() for p in pending]
            if cfg["input_injection"] and index == 0:
                if iteration == 0:
                    injected = stream + sum(pending)  # the prelude's output, fixed from here on
                else:
                    stream = stream + injected
            for branch in (lambda x: layer.attention_branch(x, rotary, iteration),
                           lambda x: layer.mlp_branch(x, iteration)):
                if len(pending) == delay:
                    stream = stream + pending.pop(0)
                pending.append(branch(stream))
        return stream + sum(pending)

    def _routed_forward(self, stream, rotary):
        """Mixture-of-Recursions: prelude, R routed iterations of the shared block, coda.

        Only STANDARD residual (validated), so every layer is x = x + attn(norm1(x)); x = x +
        mlp(norm2(x)). Iteration r of sequence b runs the block on X = H[S_r] alone, as a
        sequence of |S_r| tokens: causal among them in position order, rotary at each token's
        original position; then H_t += g_t * (Y_t - X_t) for t in S_r. The selected positions
        of each (b, r) are left in self.last_selection, a list of (b, r, positions).

        recursion_kv SHARED_FIRST (validated: iteration 0 runs all T tokens): iteration 0 keeps
        block layer j's keys (after rotary) and values of every position, in the autograd graph;
        in iterations r >= 1 layer j's queries (from the gathered tokens, rotary at their
        positions, iteration r's LoRA) attend to those cached keys and values instead of their
        own, the query at position t to the keys at positions 0 .. t."""
        cfg = self.config
        for layer in self.prelude:
            stream = _standard_layer(layer, stream, rotary)

        B, T, _ = stream.shape
        R = cfg["loops"]
        router = cfg["recursion_router"]
        alpha = _float32(cfg["recursion_gate_scale"])
        aux_weight = _float32(cfg["recursion_aux_weight"])
        W = self.loop.router.weight  # (R, C)
        if router == "TOKEN_CHOICE":
            # Decided once, on the stream entering the loop.
            probs = F.softmax(stream @ W.t(), dim=-1)  # (B, T, R)
            depth = token_depths(probs)  # (B, T), no gradient
            gates = token_gate(probs.gather(-1, depth.unsqueeze(-1)).squeeze(-1), alpha)  # (B, T)
            fraction = F.one_hot(depth, R).to(probs.dtype).mean(dim=(0, 1))  # f_j, constant
            mean_prob = probs.mean(dim=(0, 1))  # P_j
            aux = aux_weight * (R * (fraction * mean_prob).sum())
        else:
            capacities = recursion_capacities(cfg)
            bce_sum = stream.new_zeros(())

        shared_kv = cfg["recursion_kv"] == "SHARED_FIRST"
        rows = []
        for b in range(B):
            h = stream[b]  # (T, C)
            active = list(range(T))  # A_r, ascending
            cache = []  # SHARED_FIRST: iteration 0's (k, v) of each block layer, (1, H, T, hd)
            for r in range(R):
                if router == "EXPERT_CHOICE":
                    scores = h @ W[r]  # s_t for every position, at this iteration's start
                    k = expert_capacity(capacities[r], T, len(active))
                    values = scores.detach().tolist()
                    ranked = sorted(active, key=lambda t: (-values[t], t))  # ties: lower first
                    chosen = sorted(ranked[:k])
                    if active:
                        picked = set(chosen)
                        target = torch.tensor([1.0 if t in picked else 0.0 for t in active],
                                              dtype=scores.dtype)
                        bce_sum = bce_sum + F.binary_cross_entropy_with_logits(
                            scores[active], target, reduction="sum")
                    gate = expert_gate(scores[chosen], alpha) if chosen else None
                else:
                    chosen = [t for t in range(T) if int(depth[b, t]) >= r]
                    gate = gates[b, chosen]
                self.last_selection.append((b, r, tuple(chosen)))
                active = chosen
                if not chosen:
                    continue
                index = torch.tensor(chosen, dtype=torch.long)
                x = h[index].unsqueeze(0)  # (1, k, C), in position order
                sub_rotary = None if rotary is None else (rotary[0][index], rotary[1][index])
                y = x
                if shared_kv:
                    if r == 0 and len(chosen) != T:
                        raise AssertionError(f"SHARED_FIRST: iteration 0 ran {len(chosen)} of {T} tokens")
                    # Query at original position t may read the keys at positions 0 .. t.
                    allowed = torch.arange(T)[None, :] <= index[:, None]  # (k, T)
                    for j, layer in enumerate(self.block):
                        q, k_, v_ = layer.attn.project(layer.norm1(y), sub_rotary, r)
                        if r == 0:
                            cache.append((k_, v_))
                        else:
                            k_, v_ = cache[j]  # this iteration's own k_, v_ go unused
                        y = y + layer.attn.attend(q, k_, v_, allowed, r)
                        y = y + layer.mlp_branch(y, r)
                else:
                    for layer in self.block:
                        y = _standard_layer(layer, y, sub_rotary, r)
                h = h.index_add(0, index, gate.unsqueeze(-1) * (y[0] - x[0]))
            rows.append(h)
        stream = torch.stack(rows)
        if router == "EXPERT_CHOICE":
            aux = aux_weight * bce_sum / (B * T)
        self.aux_loss = aux

        for layer in self.coda:
            stream = _standard_layer(layer, stream, rotary)
        return stream


def _standard_layer(layer, x, rotary, iteration=None):
    """One pre-norm layer with the STANDARD residual (the FIFO of delay 1, written out)."""
    x = x + layer.attention_branch(x, rotary, iteration)
    return x + layer.mlp_branch(x, iteration)


def init_normal(model, std=0.02, generator=None):
    """Matrices N(0, std), biases 0, norm gains 1 (the usual GPT-2 start)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, std, generator=generator)
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm_f.weight":
                param.fill_(1.0)
            else:
                param.zero_()


# ---------------------------------------------------------------------------------------------
# Moving tensors in and out under loom's names.

def name_shape_problems(expected, got, what):
    """Lists the differences between two {name: shape} maps, one readable line each."""
    problems = [f"{what}: missing {name} (expected shape {list(expected[name])})"
                for name in sorted(set(expected) - set(got))]
    problems += [f"{what}: unexpected {name} (shape {list(got[name])})"
                 for name in sorted(set(got) - set(expected))]
    problems += [f"{what}: {name} has shape {list(got[name])}, expected {list(expected[name])}"
                 for name in sorted(set(expected) & set(got))
                 if tuple(expected[name]) != tuple(got[name])]
    return problems


def parameter_shapes(model):
    return {name: tuple(param.shape) for name, param in model.named_parameters()}


def load_loom_weights(model, tensors):
    """Copies {loom name: np.ndarray} into the model (casting to its dtype); names must match."""
    got = {name: tuple(array.shape) for name, array in tensors.items()}
    problems = name_shape_problems(parameter_shapes(model), got, "weights")
    if problems:
        raise ValueError("weights do not match the model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(np.asarray(tensors[name])).to(param.dtype))


def loom_gradients(model):
    """Returns {loom name: np.ndarray} of the current .grad (zeros where autograd left none)."""
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        grads[name] = grad.detach().cpu().numpy().copy()
    return grads
