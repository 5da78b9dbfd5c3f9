"""GRPO: group-relative advantages, the clipped surrogate loss, and the training loop."""
from grpo.advantages import group_advantages
from grpo.loss import grpo_loss

__all__ = ["group_advantages", "grpo_loss"]
