"""Distillation: token-level KL losses from a teacher into a student, and the distillation loop."""
from distill.loss import distillation_loss

__all__ = ["distillation_loss"]
