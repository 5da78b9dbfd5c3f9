"""Shared by the TRL child scripts (bench/trl_sft.py, bench/trl_grpo.py), which run in .venv-trl."""
import time

import torch
from transformers import TrainerCallback


def now() -> float:
    """perf_counter after the GPU (if any) has finished its queued work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Clock(TrainerCallback):
    """Wall-clock seconds of every optimizer step."""

    def __init__(self):
        self.seconds, self.start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = now()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(now() - self.start)
