"""Shared by the TRL child scripts (bench/trl_sft.py, bench/trl_grpo.py), which run in .venv-trl."""
import time

from transformers import TrainerCallback


class Clock(TrainerCallback):
    """Wall-clock seconds of every optimizer step."""

    def __init__(self):
        self.seconds, self.start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)
