"""A lean decoding step for Llama-family models: the sampler's hot loop without transformers' forward.

One decoding step for N sequences runs each layer on N hidden vectors (N, H): it should cost about
one read of the weights. On a 2-core CPU, transformers' forward of SmolLM2-135M takes ~110 ms per
step for N = 8 where reading its 538 MB of float32 weights takes ~18 ms, for two reasons:
- the skinny products (8 rows) go to MKL, which reads weights at 6-9 GB/s of the ~30 GB/s the
  machine has; oneDNN, given the weights once in its own blocked layout ("prepacked",
  `torch.ops.mkldnn._reorder_linear_weight`), reaches ~14 GB/s;
- each layer is ~60 small tensor ops (masks, casts, views, the attention wrapper) at ~15 us each.

`LeanDecoder(model, n)` copies the weights of each layer into four matrices, fused where they read
the same input (q|k|v and gate|up), prepacked for oneDNN on a CPU, and `step()` runs the layer in
~15 ops: about 50 ms per sampler step here against 97 ms through the model's forward, 1.9x faster
(`bench/grpo_step.py`). The copy is made per `sample()` call (the policy's
weights change every optimizer step) and costs ~0.3 s for this model.

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

from lm.logprobs import linear_head

SUPPORTED = ("llama", "qwen2")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Qwen2 RMSNorm: normalise in float32, cast back, then scale."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in transformers' convention (the two halves of the head dimension)."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


class Linear:
    """y = x W^T + b with W prepacked for oneDNN on a CPU (float32), else a plain `F.linear`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
        self.weight, self.bias, self.packed = weight, bias, False
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                self.weight, self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows), True
            except (RuntimeError, AttributeError):  # a build without the op: stay with MKL
                pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def fused(*layers: torch.nn.Linear, rows: int, dtype: torch.dtype) -> Linear:
    """One Linear computing the given layers' outputs side by side (they read the same input; in the
    supported models they all have a bias or none has), with its weights in `dtype`."""
    weight = torch.cat([layer.weight.detach() for layer in layers]).to(dtype)
    bias = None if layers[0].bias is None else torch.cat([layer.bias.detach() for layer in layers]).to(dtype)
    return Linear(weight, bias, rows)


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
    def __init__(self, model, rows: int):
        config = model.config
        self.body = model.base_model
        # the weight copies are in the compute dtype: under autocast (float32 master weights, bfloat16
        # compute) they are the sampler's bfloat16 copy of the weights, and the step runs without autocast
        self.dtype = dtype = compute_dtype(model)
        self.device_type = model.device.type
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = []
        for layer in self.body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                norm1=layer.input_layernorm.weight.detach().to(dtype),
                norm2=layer.post_attention_layernorm.weight.detach().to(dtype),
                qkv=fused(attn.q_proj, attn.k_proj, attn.v_proj, rows=rows, dtype=dtype),
                o=fused(attn.o_proj, rows=rows, dtype=dtype),
                gate_up=fused(mlp.gate_proj, mlp.up_proj, rows=rows, dtype=dtype),
                down=fused(mlp.down_proj, rows=rows, dtype=dtype), scale=attn.scaling))
        self.eps = config.rms_norm_eps
        self.final_norm = self.body.norm.weight.detach().to(dtype)
        self.head = fused(linear_head(model), rows=rows, dtype=dtype)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: torch.Tensor, cache, attention_mask: torch.Tensor) -> torch.Tensor:
        """tokens (n,), position (n, 1), `cache` with one `update(k, v)` layer per model layer (the
        sampler's PreallocatedLayer), attention_mask (n, L) over the cache including this token
        -> (n, V) next-token logits, computed in self.dtype with autocast off."""
        with torch.autocast(self.device_type, enabled=False):
            return self._step(tokens, position, cache, attention_mask)

    def _step(self, tokens, position, cache, attention_mask):
        n, Hq, Hkv, D = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        h = self.body.embed_tokens(tokens).to(self.dtype)                             # (n, H)
        cos, sin = (c.unsqueeze(1) for c in self.body.rotary_emb(h, position))        # (n, 1, 1, D)
        mask = torch.zeros(attention_mask.shape, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill_(attention_mask == 0, float("-inf"))[:, None, None]   # (n, 1, 1, L)
        for layer, cached in zip(self.layers, cache.layers):
            q, k, v = layer["qkv"](rms_norm(h, layer["norm1"], self.eps)).split([Hq * D, Hkv * D, Hkv * D], -1)
            q = rotate(q.view(n, Hkv, Hq // Hkv, D), cos, sin)   # (n, Hkv, G, D): query heads by their kv head
            k, v = cached.update(rotate(k.view(n, Hkv, 1, D), cos, sin), v.view(n, Hkv, 1, D))  # (n, Hkv, L, D)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer["scale"])  # (n, Hkv, G, D)
            h = h + layer["o"](out.reshape(n, Hq * D))
            gate, up = layer["gate_up"](rms_norm(h, layer["norm2"], self.eps)).chunk(2, -1)
            h = h + layer["down"](F.silu(gate).mul_(up))
        return self.head(rms_norm(h, self.final_norm, self.eps))                      # (n, V)
