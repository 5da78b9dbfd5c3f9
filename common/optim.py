"""Optimizer and learning-rate schedule shared by the training loops."""
import math
import time

import torch
from tqdm import tqdm

from common import dist

SCHEDULES = ("constant", "linear", "cosine")


def make_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW; biases and norm weights (1-D parameters) get no weight decay. The fused implementation
    (one kernel over all parameters, the same update) where every parameter is on a CPU or GPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear warmup, then
    constant, linear decay or cosine decay to `min_ratio` at `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr scheduler {kind!r}: choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def make_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, kind, warmup_steps, total_steps)  # validates kind
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, kind, warmup_steps, total_steps))


MAX_BAD_STEPS = 3  # non-finite updates in a row that stop a run


def clipped_step(model, optimizer, scheduler, loss: float, max_grad_norm: float, step: int) -> tuple[torch.Tensor, bool]:
    """Clip the gradient norm, then step the optimizer and the schedule, unless the loss or the gradient
    is not finite: then the update is skipped (and said) and the schedule stays where it was, so a
    skipped step costs no learning rate. Clears the gradients; returns (norm, whether it stepped)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    stepped = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
    if stepped:
        optimizer.step()
        scheduler.step()
    else:
        tqdm.write(f"step {step}: non-finite loss or gradient, update skipped")
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped


def time_is_up(started: float, max_minutes: float, step: int) -> bool:
    """--max-minutes: True on every rank once any rank has run past the budget (0: none); says so."""
    up = dist.any_rank(max_minutes > 0 and time.perf_counter() - started > 60 * max_minutes)
    if up:
        tqdm.write(f"stopping after step {step}: --max-minutes {max_minutes} reached")
    return up


def stop_after_bad_steps(bad_steps: int, step: int, last_checkpoint) -> None:
    """The one rule of every loop: MAX_BAD_STEPS skipped updates in a row stop the run, naming the
    last good checkpoint (the loops call this before saving the step's checkpoint)."""
    if bad_steps >= MAX_BAD_STEPS:
        raise RuntimeError(f"{MAX_BAD_STEPS} updates in a row had a non-finite loss or gradient; stopped at "
                           f"step {step}. Last good checkpoint: {last_checkpoint or 'none saved yet'}")
