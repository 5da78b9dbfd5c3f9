"""The SFT loss: mean negative log-likelihood of the assistant's tokens.

    loss = -(1 / normalizer) * sum over trained tokens of log p(token | everything before it)

normalizer defaults to the number of trained tokens in the batch; gradient accumulation passes the
whole optimizer step's token count to every micro-batch, so the step's gradient is the
token-weighted mean over all its examples, whatever the split (common/tokens.py).
"""
import torch

from lm.logprobs import target_nll
from sft.packing import Batch


def sft_loss(model, batch: Batch, normalizer: float | None = None, chunk_size: int = 1024) -> torch.Tensor:
    device = next(model.parameters()).device
    nll, count = target_nll(model, batch.input_ids.to(device), batch.targets.to(device),
                            position_ids=batch.position_ids.to(device),
                            attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
                            chunk_size=chunk_size)
    return nll / (normalizer if normalizer is not None else max(count, 1))
