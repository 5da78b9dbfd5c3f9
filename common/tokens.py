"""Token averaging: the one place that decides how per-token values become a loss.

Shared by SFT (cross-entropy), GRPO (all three loss types) and distillation. Each function takes an
optional `normalizer`, the denominator of the whole batch: give every micro-batch the full batch's
normalizer and the micro-batch losses add up to the full-batch loss exactly (values and gradients),
which is what gradient accumulation needs.

Shapes: N sequences, T tokens.
"""
import torch


def token_mean(values: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """sum(values * mask) / normalizer; normalizer defaults to the number of masked-in tokens."""
    assert values.shape == mask.shape, (values.shape, mask.shape)
    mask = mask.to(values.dtype)
    total = (values * mask).sum()
    return total / (normalizer if normalizer is not None else mask.sum().clamp(min=1.0))


def sequence_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, T) -> (N,): each sequence's mean over its own masked-in tokens (0 for an empty one)."""
    assert values.shape == mask.shape, (values.shape, mask.shape)
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def sequence_mean_of_means(values: torch.Tensor, mask: torch.Tensor,
                           normalizer: float | None = None) -> torch.Tensor:
    """sum over sequences of their token means / normalizer (default: the number of sequences)."""
    means = sequence_means(values, mask)                                          # (N,)
    return means.sum() / (normalizer if normalizer is not None else means.numel())
