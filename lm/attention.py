"""Attention for packed rows that only computes the blocks it needs.

A packed row holds several examples back to back, with position ids that restart at 0 for each:

    position_ids   0 1 2 3 | 0 1 2 | 0 1 2 3 4 | 0 1     (the last segment may be padding)
    attention      [ A   ] | [ B ] | [  C    ] | [pad]   causal inside each block, nothing across

transformers builds the full L x L block-diagonal mask for that and runs one masked attention over
the whole row, which costs L^2 whatever the examples are; here each example runs its own causal
attention (`scaled_dot_product_attention(is_causal=True)`, the fast kernel), which costs the sum of
the squares of the example lengths: for 1,024-token rows of ~350-token examples, a third.

`packed_attention(model)` switches a model to it for the duration of a `with` block; padded batches
(with an attention mask) and calls without position ids fall back to transformers' sdpa.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

NAME = "packed_sdpa"


def segment_starts(positions: torch.Tensor) -> list[int]:
    """Start offsets of the examples in one row of restarting position ids, plus the row length."""
    starts = (positions == 0).nonzero().squeeze(-1).tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    return starts + [positions.numel()]


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                position_ids: torch.Tensor | None = None, **kwargs):
    """query (R, H, L, D), key/value (R, Hkv, L, D) -> (R, L, H, D), attention inside each example only."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    rows = []
    for r in range(query.shape[0]):
        starts = segment_starts(position_ids[r if position_ids.shape[0] > 1 else 0])
        rows.append(torch.cat([
            F.scaled_dot_product_attention(query[r:r + 1, :, a:b], key[r:r + 1, :, a:b], value[r:r + 1, :, a:b],
                                           dropout_p=dropout, is_causal=True, scale=scaling)
            for a, b in zip(starts[:-1], starts[1:])], dim=2))                   # (1, H, L, D)
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)  # no L x L mask is built


@contextmanager
def packed_attention(model):
    """Run `model` with `packed_sdpa` inside the block (sdpa and eager models only; others unchanged)."""
    config = model.config
    before = config._attn_implementation
    if before not in ("sdpa", "eager"):
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
