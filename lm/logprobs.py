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
"""
from contextlib import nullcontext

import torch
from torch.utils.checkpoint import checkpoint

from lm.attention import packed_attention


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_logp(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = lm_head(hidden).float() / temperature                                # (C, V)
    lse = logits.logsumexp(-1)                                                    # (C,)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse                  # (C,)
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    probs = (logits - lse[:, None]).exp()
    entropy = lse - (probs * logits).sum(-1)                                      # (C,)
    return logp, entropy


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor | None = None, *,
                   temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False):
    """log p(completion token | everything before it) at `temperature`, shape (N, T).

    Returns (logp, entropy); entropy (N, T) is the entropy of each position's tempered distribution
    (zeros unless `with_entropy`). Padding positions get a value too; callers mask them.
    """
    N, T = completion_ids.shape
    assert prompt_ids.shape[0] == N and prompt_mask.shape == prompt_ids.shape
    if completion_mask is None:
        completion_mask = torch.ones_like(completion_ids)
    ids = torch.cat([prompt_ids, completion_ids], 1)                              # (N, P+T)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], 1)     # (N, P+T)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                              use_cache=False).last_hidden_state
    hidden = hidden[:, -T - 1:-1].reshape(N * T, -1)                              # (N*T, H)
    logp, entropy = chunked_logprobs(model.get_output_embeddings(), hidden, completion_ids.reshape(N * T),
                                     temperature, chunk_size, with_entropy)
    return logp.view(N, T), entropy.view(N, T)


def chunked_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     chunk_size: int = 1024, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, H) hidden states and (M,) targets -> (M,) log-probs (and entropies), chunk by chunk."""
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (lm_head, hidden[start:start + chunk_size], targets[start:start + chunk_size],
                temperature, with_entropy)
        logp, ent = checkpoint(_chunk_logp, *args, use_reentrant=False) if recompute else _chunk_logp(*args)
        logps.append(logp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies)


def hidden_states(model, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(R, L, H) last hidden states of the model's body. Packed rows (restarting position ids, no
    attention mask) run attention inside each example only (lm/attention.py)."""
    packed = attention_mask is None and position_ids is not None
    with packed_attention(model) if packed else nullcontext():
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).last_hidden_state


def target_logprobs(model, input_ids: torch.Tensor, targets: torch.Tensor, *,
                    position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                    chunk_size: int = 1024) -> torch.Tensor:
    """Log-probs (M,) of the next-token `targets` (R, L) at the positions where targets != -100.

    The SFT/distillation layout: `targets[r, t]` is the token position t predicts. Only those
    positions go through the output layer (prompt tokens never reach the vocabulary projection).
    For packed rows pass restarting `position_ids` and no attention mask.
    """
    hidden = hidden_states(model, input_ids, position_ids=position_ids, attention_mask=attention_mask)  # (R, L, H)
    keep = targets != -100                                                        # (R, L)
    return chunked_logprobs(model.get_output_embeddings(), hidden[keep], targets[keep],
                            chunk_size=chunk_size)[0]                             # (M,)
