"""A lean decoding step for Llama-family models: the sampler's hot loop without transformers' forward.

One decoding step for N sequences runs each layer on N hidden vectors (N, H): it should cost about
one read of the weights. On a 2-core CPU, transformers' forward of SmolLM2-135M takes ~110 ms per
step for N = 8 where reading its 538 MB of float32 weights takes ~18 ms, for two reasons:
- the skinny products (8 rows) go to MKL, which reads weights at 6-9 GB/s of the ~30 GB/s the
  machine has; oneDNN, given the weights once in its own blocked layout ("prepacked",
  `torch.ops.mkldnn._reorder_linear_weight`), reaches ~14 GB/s;
- each layer is ~60 small tensor ops (masks, casts, views, the attention wrapper) at ~15 us each.

`LeanDecoder(model)` copies the weights of each layer into four matrices, fused where they read
the same input (q|k|v and gate|up), prepacked for oneDNN on a CPU, and `step()` runs the layer in
a few ops (q and k rotated at once, residuals added inside the products): about 50 ms per sampler
step here against 97 ms through the model's forward, 1.9x faster (`bench/grpo_step.py`).
Copies cost memory (2 bytes a parameter in bfloat16: 14 GiB for a 7B model), so a model whose layers
hold more than IN_PLACE_ABOVE bytes (1 GiB) in the compute dtype is not copied: every matrix is read
where the trainer keeps it (q, k, v and gate, up as separate products, whose outputs are put side by
side), and LoRA's adapters are added as (x A^T)(s B)^T from copies of A and s B, a few MB, instead of a
merged W + s BA (`Linear`). A float32 model on a CPU is always copied, prepacked for oneDNN.

On a GPU the cost is the launches, not the bytes: an H200 reads this model's bfloat16 weights in
~0.06 ms, but each kernel costs ~3 us even replayed from a CUDA graph, so a step costs what it
launches. There the step is captured as a CUDA graph per batch size (lm/rollout.py), and each
layer's two halves, up to attention and after it, are compiled (`torch.compile`, COMPILE_ON_CUDA),
which fuses the norms, the rotation and the SiLU product into few kernels. Measured on one H200
(bench/gpu_check.sh; SmolLM2-135M's shape, 8 rows, bfloat16; kernels a layer counted by the
profiler with the step's own overhead and a share of the prefill): the first version of this step
37 a layer, 3.02 ms a token with graphs; fewer ops as above 29.8, 2.51 ms; compiled 19.8, 1.87 ms;
transformers' forward ~37 ms. The copies are in the compute dtype (under autocast: the sampler's
bfloat16 copy of float32 master weights). They persist between `sample()` calls, so a CUDA graph
can read them by address: `refresh()` writes the model's current weights into them in place (on a
CPU it repacks, ~0.3 s for this model), and `stale()` says when the weights may have changed since:
an optimizer stepped (any optimizer: a process-wide post-step hook counts them; fused AdamW moves no
version counter) or a parameter's in-place version counter moved. The sampler refreshes a stale
decoder before it decodes, so it never samples from old weights.

The step reads and writes a `StaticCache`: per layer a (rows, Hkv, capacity, D) key and value buffer
allocated once for the whole rollout, and a (rows, capacity) mask of the filled columns; the new
token's key and value go to column `column` (a device tensor: no host value is needed, as a CUDA
graph requires). `window` limits attention to the first columns (eagerly the filled ones; a captured
graph, whose shapes are fixed, the filled ones rounded up to a length bucket: lm/rollout.py); None
attends over the whole capacity, masked.

The step computes what the model's forward computes, in the same dtype, to float rounding
(|logit difference| < 1e-4 in float32, tested against transformers on tiny Llama and Qwen2 models).
The model's own embedding, rotary embedding (so any RoPE scaling it uses) and final norm modules
are called; the rest is written out:

    x = rms_norm(h) ; q, k, v = x @ Wqkv ; q, k = rope(q, k) ; append k, v to the cache
    h = h + softmax(q k^T * scale + mask) v @ Wo                (grouped-query: G = Hq / Hkv)
    x = rms_norm(h) ; g, u = x @ Wgu ; h = h + (silu(g) * u) @ Wdown

Supported: model_type llama (SmolLM, Llama 2/3) and qwen2 (Qwen2/2.5, q/k/v biases) with a SiLU
MLP, no sliding window, a plain linear output layer. `LeanDecoder.supports(model)` says; the
sampler uses transformers' forward for anything else. Training log-probs always come from the
model's forward (lm/logprobs.py), never from here.
"""
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from lm.logprobs import linear_head
from lm.lora import merged_weight

SUPPORTED = ("llama", "qwen2")
COMPILE_ON_CUDA = True  # compile the layer's two halves on a GPU (see LeanDecoder.__init__)
IN_PLACE_ABOVE = 2 ** 30  # bytes of layer weights above which the step reads them in place (see `Linear`)
_optimizer_steps = 0  # optimizer steps taken in this process, by any optimizer


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# A fused or foreach optimizer writes the weights without moving their version counters, so the
# version counters alone cannot tell a decoder that its copies are old: every optimizer step counts.
register_optimizer_step_post_hook(_count_step)


class StaticCache:
    """Keys and values of every layer for `rows` sequences and `capacity` positions, and which
    positions hold a token (`valid`). Rows can be compacted into a prefix (`keep_first`)."""

    def __init__(self, layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int, dtype, device):
        shape = (rows, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.valid = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        self.capacity = capacity

    def load(self, prefill_layers, prompt_mask: torch.Tensor, row_of: torch.Tensor) -> None:
        """Copy a prefill's (B, Hkv, P, D) caches into the first P columns; row i takes prompt row_of[i]."""
        P = prompt_mask.shape[1]
        for k, v, layer in zip(self.keys, self.values, prefill_layers):
            k[:len(row_of), :, :P] = layer.keys[row_of]
            v[:len(row_of), :, :P] = layer.values[row_of]
        self.valid.zero_()
        self.valid[:len(row_of), :P] = prompt_mask[row_of].bool()

    def buffers(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.valid]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Qwen2 RMSNorm: normalise in float32, cast back, then scale."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b, with W prepacked for oneDNN (an mkldnn tensor, on a CPU) or plain."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def project(x: torch.Tensor, parts: list) -> torch.Tensor:
    """x through a projection's parts (see `Linear`), their outputs side by side: each part x W^T + b,
    plus (x A^T) B^T where it carries LoRA's adapters (B already scaled)."""
    outs = []
    for weight, bias, a, b in parts:
        y = linear(x, weight, bias)
        outs.append(y if a is None else torch.addmm(y, x @ a.t(), b.t()))
    return outs[0] if len(outs) == 1 else torch.cat(outs, -1)


def plus_project(h: torch.Tensor, x: torch.Tensor, parts: list) -> torch.Tensor:
    """h + x W^T + b (+ LoRA's part): the residual added inside the product (addmm: one kernel on a GPU)
    where W is plain and single."""
    (weight, bias, a, b), = parts
    if weight.is_mkldnn or a is not None:
        return h + project(x, parts)
    out = torch.addmm(h, x, weight.t())
    return out if bias is None else out + bias


def attention_inputs(h, norm, qkv, cos, sin, eps: float, heads: int, kv_heads: int):
    """The first half of a layer up to attention: h (n, H) -> q (n, Hkv, G, D) by their kv head and
    k, v (n, Hkv, 1, D), q and k rotated. `sin` has its first half negated (see `rotary_tables`)."""
    n, D = h.shape[0], cos.shape[-1]
    x = project(rms_norm(h, norm, eps), qkv)                                       # (n, (Hq + 2 Hkv) D)
    qk = x[:, :(heads + kv_heads) * D].view(n, heads + kv_heads, D)
    qk = torch.addcmul(qk * cos, qk.roll(D // 2, -1), sin)                        # q and k rotated at once
    q = qk[:, :heads].view(n, kv_heads, heads // kv_heads, D)
    return q, qk[:, heads:].view(n, kv_heads, 1, D), x[:, (heads + kv_heads) * D:].view(n, kv_heads, 1, D)


def attention_out_and_mlp(h, out, o, norm, gate_up, down, eps: float):
    """The rest of a layer: h + attention output @ Wo, then h + (silu(g) * u) @ Wdown."""
    h = plus_project(h, out.reshape(h.shape[0], -1), o)
    gate, up = project(rms_norm(h, norm, eps), gate_up).chunk(2, -1)
    return plus_project(h, F.silu(gate).mul_(up), down)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' rotation x cos + cat(-x2, x1) sin, written as x cos + roll(x, D/2) sin' with
    sin' = cat(-sin1, sin2): a roll instead of a negation and a concatenation, for q and k at once."""
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), -1)


def weight_of(layer) -> torch.Tensor:
    """A linear layer's weight as its forward applies it. With LoRA adapters (peft, lm/lora.py) that are
    on and not merged: W + each active adapter's B A * scaling, so the sampler samples the adapted model
    (its copies are refreshed after every optimizer step, as for full fine-tuning)."""
    if hasattr(layer, "lora_A"):
        return merged_weight(layer, layer.weight.dtype)
    return layer.weight.detach()


def base_weight(layer) -> torch.Tensor:
    """The weight a layer holds itself: LoRA's frozen base, or the plain layer's weight."""
    return (layer.base_layer if hasattr(layer, "lora_A") else layer).weight


def adapters_of(layer, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A layer's active LoRA adapters as one (A, s B) pair in `dtype` (several adapters stacked along the
    rank), so that x W^T + (x A^T) (s B)^T is its forward; zeros when they are off or merged into W."""
    if not hasattr(layer, "lora_A"):
        return None
    names = [name for name in layer.active_adapters if name in layer.lora_A]
    a = torch.cat([layer.lora_A[name].weight.detach() for name in names]).to(dtype)
    b = torch.cat([layer.lora_B[name].weight.detach() * layer.scaling[name] for name in names], 1).to(dtype)
    return (a, b.zero_()) if layer.merged or layer.disable_adapters else (a, b)


def prepacked(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the sampler copies matrices to prepack them for oneDNN (float32 on a CPU: faster there)."""
    return device_type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


class Linear:
    """One projection of the step, from one or more layers that read the same input, as `parts`
    (weight, bias, A, B) for `project`. Either one part holding a copy of the layers' weights side by
    side in the compute dtype (prepacked for oneDNN on a CPU; LoRA merged in: W + BA), or (`in_place`)
    a part per layer that reads the layer's own weight where it lies, in the compute dtype already, with
    LoRA's adapters as small copies (A, s B): no copy of the model. A single plain layer whose weight is
    in the compute dtype is always read in place."""

    def __init__(self, layers: tuple, rows: int, dtype: torch.dtype, in_place: bool):
        self.layers, self.rows, self.dtype = layers, rows, dtype
        own = all(base_weight(layer).dtype == dtype for layer in layers)
        single = len(layers) == 1 and not hasattr(layers[0], "lora_A")
        prepack = prepacked(base_weight(layers[0]).device.type, dtype)
        self.in_place = own and (in_place or single) and not prepack
        if self.in_place:
            self.parts = [[base_weight(layer).detach(), None if layer.bias is None else layer.bias.detach(),
                           *(adapters_of(layer, dtype) or (None, None))] for layer in layers]
            return
        weight = torch.cat([weight_of(layer) for layer in layers]).to(dtype)
        bias = None if layers[0].bias is None else torch.cat([layer.bias.detach() for layer in layers]).to(dtype)
        if prepack:
            try:
                weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
            except (RuntimeError, AttributeError):  # a build without the op: stay with MKL
                pass
        self.parts = [[weight, bias, None, None]]

    @property
    def weight(self) -> torch.Tensor:
        return self.parts[0][0]

    def refresh(self) -> None:
        """The layers' current weights: in place (so a captured graph reads them), or repacked on a CPU.
        Read in place, only LoRA's adapter copies are written."""
        if self.in_place:
            for part, layer in zip(self.parts, self.layers):
                adapters = adapters_of(layer, self.dtype)
                if adapters is not None:
                    part[2].copy_(adapters[0])
                    part[3].copy_(adapters[1])
            return
        weight, bias, _, _ = self.parts[0]
        new = torch.cat([weight_of(layer) for layer in self.layers])
        if bias is not None:
            bias.copy_(torch.cat([layer.bias.detach() for layer in self.layers]))
        if weight.is_mkldnn:
            self.parts[0][0] = torch.ops.mkldnn._reorder_linear_weight(new.to(self.dtype), self.rows)
        else:
            weight.copy_(new)


def compute_dtype(model) -> torch.dtype:
    """The dtype the model's products run in here: autocast's when it is on, else the weights'."""
    device_type = model.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return model.dtype


class LeanDecoder:
    """Decoding steps of `model` for up to `rows` sequences (see the module docstring)."""

    @staticmethod
    def supports(model) -> bool:
        config = model.config
        return (config.model_type in SUPPORTED and config.hidden_act == "silu"
                and not getattr(config, "use_sliding_window", False) and linear_head(model) is not None)

    @torch.no_grad()
    def __init__(self, model, rows: int = 8, compile: bool | None = None):
        config = model.config
        self.model, self.body, self.rows = model, model.base_model, rows
        # the weight copies are in the compute dtype: under autocast (float32 master weights, bfloat16
        # compute) they are the sampler's bfloat16 copy of the weights, and the step runs without autocast
        self.dtype = compute_dtype(model)
        self.device_type = model.device.type
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.layers = [dict(scale=layer.self_attn.scaling) for layer in self.body.layers]
        # a large model is read where it lies instead of copied (see `Linear`), when it is in the compute dtype
        layer_bytes = sum(p.numel() for p in self.body.layers.parameters()) * self.dtype.itemsize
        self.in_place = layer_bytes > IN_PLACE_ABOVE
        self.top = {}  # the final norm and the output layer
        # On a GPU the two halves of a layer are compiled (torch.compile fuses their elementwise work into
        # a few kernels: a captured step costs what it launches); COMPILE_ON_CUDA = False turns it off
        self.compiled = (self.device_type == "cuda" and COMPILE_ON_CUDA) if compile is None else compile
        halves = (attention_inputs, attention_out_and_mlp)
        self.first_half, self.second_half = (torch.compile(f, dynamic=None) for f in halves) if self.compiled else halves
        self.refresh()

    def sources(self):
        """(name, layer index or None, the model's modules whose weights it holds) for every copy."""
        for i, layer in enumerate(self.body.layers):
            attn, mlp = layer.self_attn, layer.mlp
            yield "norm1", i, layer.input_layernorm
            yield "norm2", i, layer.post_attention_layernorm
            yield "qkv", i, (attn.q_proj, attn.k_proj, attn.v_proj)
            yield "o", i, (attn.o_proj,)
            yield "gate_up", i, (mlp.gate_proj, mlp.up_proj)
            yield "down", i, (mlp.down_proj,)
        yield "final_norm", None, self.body.norm
        yield "head", None, (linear_head(self.model),)

    @torch.no_grad()
    def refresh(self) -> None:
        """Write the model's current weights into the copies (in place where they exist, so a captured
        graph reads the new ones); the weight-refresh hook for anything that changes the weights."""
        for name, i, source in self.sources():
            home = self.layers[i] if i is not None else self.top
            if isinstance(source, tuple):
                if name in home:
                    home[name].refresh()
                else:
                    home[name] = Linear(source, self.rows, self.dtype, self.in_place)
            elif name in home:
                home[name].copy_(source.weight)
            else:
                home[name] = source.weight.detach().to(self.dtype).clone()
        self._versions = self.versions()

    def versions(self) -> tuple[int, list[int]]:
        return _optimizer_steps, [p._version for p in self.model.parameters()]

    def stale(self) -> bool:
        """True when an optimizer stepped or a parameter was changed in place since the last refresh."""
        return self.versions() != self._versions

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: torch.Tensor, cache: StaticCache, column: torch.Tensor,
             rows: int, window: int | None = None) -> torch.Tensor:
        """One decoding step for the first `rows` rows of `cache`: tokens (n,) at positions (n,), their
        keys and values written to `column` (0-dim tensor), attention over the valid columns (the first
        `window`, or all) -> (n, V) next-token logits, computed in self.dtype with autocast off."""
        with torch.autocast(self.device_type, enabled=False):
            return self._step(tokens, position, cache, column, rows, window)

    def _step(self, tokens, position, cache, column, n, window):
        W = window or cache.capacity
        h = self.body.embed_tokens(tokens).to(self.dtype)                             # (n, H)
        cos, sin = rotary_tables(*self.body.rotary_emb(h, position[:, None]))        # (n, 1, D)
        valid = cache.valid[:n]
        valid.index_fill_(1, column.view(1), True)
        mask = torch.zeros((n, W), dtype=h.dtype, device=h.device).masked_fill_(~valid[:, :W], float("-inf"))
        mask = mask[:, None, None]                                                    # (n, 1, 1, W)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values):
            q, k, v = self.first_half(h, layer["norm1"], layer["qkv"].parts, cos, sin, self.eps, self.heads,
                                      self.kv_heads)
            keys[:n].index_copy_(2, column.view(1), k)
            values[:n].index_copy_(2, column.view(1), v)
            out = F.scaled_dot_product_attention(q, keys[:n, :, :W], values[:n, :, :W], attn_mask=mask,
                                                 scale=layer["scale"])                 # (n, Hkv, G, D)
            h = self.second_half(h, out, layer["o"].parts, layer["norm2"], layer["gate_up"].parts,
                                 layer["down"].parts, self.eps)
        return project(rms_norm(h, self.top["final_norm"], self.eps), self.top["head"].parts)   # (n, V)

    def new_cache(self, rows: int, capacity: int) -> StaticCache:
        return StaticCache(len(self.layers), rows, self.kv_heads, capacity, self.head_dim, self.dtype,
                           self.model.device)
