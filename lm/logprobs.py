"""Per-token log-probs of given completion tokens, computed in chunks.

Shapes: N sequences, P prompt length, T completion length, H hidden size, V vocabulary.

The body of the model runs once over [prompt | completion] (N, P+T); the output layer and the
log-softmax then run over chunks of `chunk_size` token positions, so the (N, T, V) float32
log-softmax is never held at once. With gradients on, each chunk is recomputed in the backward pass
(activation checkpointing), so only one chunk's logits are alive at a time there too.

Log-probs are taken at a temperature: logp = log_softmax(logits / temperature). GRPO trains the
distribution it sampled from, so it passes its sampling temperature here.

The plain version, the oracle this is tested against:
    logits = model(ids).logits[:, P-1:-1] / temperature
    logp = logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)

Shared prompts (a speed path with the plain forward as its oracle). GRPO scores G completions of each
prompt, so a batch holds each prompt G times. `shared_prompt_hidden` runs each distinct prompt once,
with a KV cache, and the completions on copies of that cache:

    prompts (U, P) --body--> KV cache (U, P) --select rows--> KV cache (N, P)
                                                                  |
    completions (N, T-1) ------------------------------------body--> hidden (N, T-1)

which skips (G - 1) / G of the prompt tokens in both the forward and the backward pass (gradients
from every copy of a cache row add up in its prompt's forward, as they would across the copies).
The completion's last token is never an input: it predicts nothing that is scored.
"""
from contextlib import nullcontext

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from lm import sharding
from lm.attention import packed_attention
from lm.draw import kept_logits, truncated


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_logp(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool, top_k: int = 0, top_p: float = 1.0, kept_head=None,
                kept_hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = lm_head(hidden).float() / temperature                                # (C, V)
    if truncated(top_k, top_p, logits.shape[-1]):  # the sampler's kept set (its own or kept_head's)
        kept_by = None if kept_head is None else kept_head(kept_hidden).float() / temperature
        logits = kept_logits(logits, targets, top_k, top_p, kept_by)              # -inf outside it
    lse = logits.logsumexp(-1)                                                    # (C,)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse                  # (C,)
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    with torch.no_grad():  # a statistic, never differentiated: its (C, V) products keep nothing for backward
        probs = (logits - lse[:, None]).exp()
        entropy = lse - torch.where(probs > 0, probs * logits, 0.0).sum(-1)       # (C,) (0 * -inf: 0)
    return logp, entropy


@sharding.entry
def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor | None = None, *,
                   temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False,
                   share_prompts: bool = True, top_k: int = 0, top_p: float = 1.0, kept_by=None):
    """log p(completion token | everything before it) at `temperature`, shape (N, T).

    Returns (logp, entropy); entropy (N, T) is the entropy of each position's tempered distribution
    (zeros unless `with_entropy`). Padding positions get a value too; callers mask them.
    `share_prompts` runs each distinct prompt once (`shared_prompt_hidden`); False (and gradient
    checkpointing, which turns transformers' KV cache off) runs the plain `completion_hidden`.
    `top_k` / `top_p`: the distribution the sampler drew from, softmax over the tokens that
    `lm.draw.filter_logits` keeps (the completion's token always kept: `lm.draw.kept_logits`); with
    `kept_by` (another model, run without gradients) the kept set is that model's, not this one's.
    """
    N, T = completion_ids.shape
    assert prompt_ids.shape[0] == N and prompt_mask.shape == prompt_ids.shape
    if completion_mask is None:
        completion_mask = torch.ones_like(completion_ids)
    completion_mask = completion_mask.to(prompt_mask.dtype)
    shared = share_prompts and T > 1 and not _checkpointing(model)
    body = shared_prompt_hidden if shared else completion_hidden
    hidden = body(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # (N, T, H)
    kept = None
    if kept_by is not None and truncated(top_k, top_p, model.config.vocab_size):
        with torch.no_grad():
            kept = (kept_by.get_output_embeddings(),
                    body(kept_by, prompt_ids, prompt_mask, completion_ids, completion_mask).reshape(N * T, -1))
    logp, entropy = chunked_logprobs(model.get_output_embeddings(), hidden.reshape(N * T, -1),
                                     completion_ids.reshape(N * T), temperature, chunk_size, with_entropy,
                                     top_k=top_k, top_p=top_p, kept=kept)
    return logp.view(N, T), entropy.view(N, T)


def _checkpointing(model) -> bool:
    """Whether activation checkpointing is on (transformers then refuses a KV cache in training)."""
    on = getattr(model, "is_activation_checkpointing", None)   # transformers 5 (peft's wrapper forwards it)
    return bool(getattr(model, "is_gradient_checkpointing", False) if on is None else on)


def completion_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(N, T, H) hidden states that predict each completion token: one forward over [prompt | completion]."""
    T = completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], 1)                              # (N, P+T)
    mask = torch.cat([prompt_mask, completion_mask], 1)                           # (N, P+T)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                              use_cache=False).last_hidden_state                  # (N, P+T, H)
    return hidden[:, -T - 1:-1]                                                   # (N, T, H)


def shared_prompt_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """`completion_hidden` with each distinct prompt run once (see the module docstring)."""
    P = prompt_ids.shape[1]
    rows = torch.cat([prompt_ids, prompt_mask], 1)                                # (N, 2P)
    distinct, index = torch.unique(rows, dim=0, return_inverse=True)             # (U, 2P), (N,)
    u_ids, u_mask = distinct[:, :P], distinct[:, P:]                             # (U, P)
    cache = DynamicCache(config=model.config)
    prompt_last = model.base_model(input_ids=u_ids, attention_mask=u_mask, position_ids=positions_from_mask(u_mask),
                                   past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (U, H)
    copies = torch.nn.functional.one_hot(index, len(distinct)).to(prompt_last.dtype)  # (N, U)
    for layer in cache.layers:                                                    # (U, ...) -> (N, ...)
        layer.keys, layer.values = copy_rows(layer.keys, copies), copy_rows(layer.values, copies)
    mask = torch.cat([prompt_mask, completion_mask], 1)[:, :-1]                  # (N, P+T-1)
    hidden = model.base_model(input_ids=completion_ids[:, :-1], attention_mask=mask,
                              position_ids=positions_from_mask(mask)[:, P:], past_key_values=cache,
                              use_cache=True).last_hidden_state                   # (N, T-1, H)
    return torch.cat([copy_rows(prompt_last, copies)[:, None], hidden], 1)       # (N, T, H)


def copy_rows(x: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
    """Row n of the result is row u of x where copies[n, u] = 1: (U, ...) -> (N, ...).
    A product with the 0/1 matrix rather than x[index], whose backward adds the copies' gradients
    in a thread-dependent order; the product's is the same every run (exact resume needs that)."""
    return (copies @ x.reshape(x.shape[0], -1)).view(copies.shape[0], *x.shape[1:])


def chunked_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     chunk_size: int = 1024, with_entropy: bool = False, *, top_k: int = 0, top_p: float = 1.0,
                     kept: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, H) hidden states and (M,) targets -> (M,) log-probs (and entropies), chunk by chunk.
    `top_k`, `top_p`, `kept` (another model's output layer and (M, H) hidden states): token_logprobs.
    With gradients on and more than one chunk, each chunk's logits are recomputed in the backward
    pass; a single chunk keeps its logits instead (no more memory than the plain version, and one
    vocabulary-sized product less)."""
    recompute = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > chunk_size
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (lm_head, hidden[start:start + chunk_size], targets[start:start + chunk_size],
                temperature, with_entropy, top_k, top_p,
                *((kept[0], kept[1][start:start + chunk_size]) if kept is not None else ()))
        logp, ent = checkpoint(_chunk_logp, *args, use_reentrant=False) if recompute else _chunk_logp(*args)
        logps.append(logp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies)


def linear_head(model) -> torch.nn.Linear | None:
    """The output layer when it is a plain linear map (Llama, Qwen, SmolLM), which the sampler and the
    fused SFT loss multiply by hand; None for anything else (soft-capped logits, custom heads)."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or getattr(model.config, "final_logit_softcapping", None):
        return None
    return head


def hidden_states(model, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(R, L, H) last hidden states of the model's body. Packed rows (restarting position ids, no
    attention mask) run attention inside each example only (lm/attention.py)."""
    packed = attention_mask is None and position_ids is not None
    with packed_attention(model) if packed else nullcontext():
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).last_hidden_state


class _ChunkedNLL(torch.autograd.Function):
    """sum_i -log softmax(h_i W^T)[t_i], with the gradient computed in the forward pass, chunk by chunk.

    For one position, d(-log p_t)/d logits = softmax - onehot(t) =: g, so d/dh = g W and d/dW = g^T h.
    Computing them while the chunk's logits are at hand means the backward pass has nothing to
    redo: three (C, V)-sized products per chunk where checkpointing needs four, and the (M, V) logits
    never exist at once. The saved gradients are scaled by the incoming gradient in `backward`
    (the loss is a plain sum, so that scale is the same for every position)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, with_grad):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ctx.weight_dtype = weight.dtype
        grad_h = torch.empty_like(hidden) if with_grad and ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if with_grad and ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            logits = (h @ weight.T).float()                                       # (C, V)
            lse = logits.logsumexp(-1)                                            # (C,)
            total += (lse - logits.gather(-1, t[:, None]).squeeze(-1)).sum()
            if grad_h is None and grad_w is None:
                continue
            g = logits.sub_(lse[:, None]).exp_()                                  # softmax, in place
            g[torch.arange(len(t), device=g.device), t] -= 1.0
            if grad_h is not None:
                grad_h[start:start + chunk_size] = g.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(g.T, h.float())
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        dh = None if grad_h is None else grad_h * grad_out.to(grad_h.dtype)
        dw = None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype)
        return dh, dw, None, None, None


@sharding.entry
def target_nll(model, input_ids: torch.Tensor, targets: torch.Tensor, *,
               position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
               chunk_size: int = 1024) -> tuple[torch.Tensor, int]:
    """(sum of -log p(target), number of targets) over the positions where targets (R, L) != -100.

    The SFT/distillation layout: `targets[r, t]` is the token position t predicts. Only those
    positions go through the output layer (prompt tokens never reach the vocabulary projection).
    For packed rows pass restarting `position_ids` and no attention mask. A plain linear output layer
    (Llama, Qwen, SmolLM) takes the fused path above; any other head goes through chunked_logprobs.
    """
    hidden = hidden_states(model, input_ids, position_ids=position_ids, attention_mask=attention_mask)  # (R, L, H)
    keep = targets != -100                                                        # (R, L)
    hidden, targets = hidden[keep], targets[keep]                                 # (M, H), (M,)
    head = linear_head(model)
    if head is None or head.bias is not None:
        return -chunked_logprobs(model.get_output_embeddings(), hidden, targets, chunk_size=chunk_size)[0].sum(), \
            len(targets)
    return _ChunkedNLL.apply(hidden, head.weight, targets, chunk_size, torch.is_grad_enabled()), len(targets)
