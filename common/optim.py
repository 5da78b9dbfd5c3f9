"""Optimizer and learning-rate schedule shared by the training loops."""
import functools
import math
import time

import torch
from tqdm import tqdm

from common import dist

SCHEDULES = ("constant", "linear", "cosine")


OPTIMS = ("adamw_torch", "adamw_torch_8bit", "adamw_torch_4bit")
OPTIM_HELP = ("AdamW's state: adamw_torch (as the weights: 4 bytes a parameter for each of its two moments "
              "in float32), adamw_torch_8bit (1 byte each, blockwise quantised), adamw_torch_4bit (half a "
              "byte each); the 8- and 4-bit states and bfloat16 weights use torchao")


OFFLOAD_HELP = ("on a GPU: AdamW's state and the step it takes in host memory, with a host copy of the weights "
                "and gradients (torchao's CPUOffloadOptimizer; one process): the optimizer's bytes leave the GPU, "
                "its step runs on the CPU (on a CPU they are in host memory already)")


def check_optim(optim: str, fsdp: bool, offload: bool = False) -> None:
    """A config's `--optim` (with `--fsdp`, `--offload-optimizer` or not): ValueError with one line if it
    cannot run."""
    if optim not in OPTIMS:
        raise ValueError(f"--optim {optim!r}: choose one of {', '.join(OPTIMS)}")
    if fsdp and optim != "adamw_torch":
        raise ValueError(f"--optim {optim} with --fsdp: torchao's quantised AdamW state does not go through "
                         f"FSDP2's checkpoints yet; use --optim adamw_torch (bfloat16 weights work)")
    if fsdp and offload:
        raise ValueError("--offload-optimizer is for one GPU (torchao's CPUOffloadOptimizer); with --fsdp each "
                         "rank already holds only its shard of the optimizer state")


def make_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                   optim: str = "adamw_torch", offload: bool = False) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D parameters) get no weight decay.

    `optim` (transformers' `--optim` names) sets the bytes of its two moments: as the weights
    (adamw_torch), 8-bit or 4-bit blockwise quantised (torchao's AdamW8bit / AdamW4bit; tensors under
    4,096 values stay as the weights). Float32 weights with adamw_torch use torch's fused AdamW (one
    kernel over all parameters). bfloat16 weights are always updated by torchao with stochastic
    rounding: the update is computed in float32 and rounded up or down at random, in proportion, so
    one smaller than bfloat16's spacing (~1/256 of the weight) lands in expectation instead of being
    rounded away (tests/test_optim_modes.py). torchao compiles its step once per parameter shape
    (`torch.compile`; a minute or two on a 2-core CPU the first time, cached on disk after).

    `offload` on a GPU: torchao's CPUOffloadOptimizer runs that same optimizer on pinned host copies of
    the weights (in their dtype) and gradients, copied there as the backward pass finishes each one, and
    copies the updated weights back; tensors under 4,096 values stay on the GPU. `clipped_step` brings
    clipping and the zero gradients of untrained parameters to the host copies."""
    check_optim(optim, fsdp=False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    bf16 = any(p.dtype == torch.bfloat16 for p in params)
    offload = offload and any(p.device.type == "cuda" for p in params)   # on a CPU: host memory already
    if offload and dist.world() > 1:
        from common.config import ConfigError
        raise ConfigError("--offload-optimizer runs on one GPU (torchao's CPUOffloadOptimizer): not under torchrun "
                          "with several processes; use --fsdp there to split the optimizer state")
    if optim == "adamw_torch" and not bf16:
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
        if offload:  # the host's fused AdamW
            return torchao_optim().CPUOffloadOptimizer(groups, torch.optim.AdamW, lr=lr, betas=betas, fused=True)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    ao = torchao_optim()
    kind = {"adamw_torch": ao._AdamW, "adamw_torch_8bit": ao.AdamW8bit, "adamw_torch_4bit": ao.AdamW4bit}[optim]
    settings = dict(lr=lr, betas=betas, eps=1e-8, weight_decay=weight_decay, bf16_stochastic_round=bf16)
    return ao.CPUOffloadOptimizer(groups, kind, **settings) if offload else kind(groups, **settings)


def offloaded(optimizer) -> bool:
    """Whether `optimizer` is torchao's CPUOffloadOptimizer (`--offload-optimizer` on a GPU)."""
    return hasattr(optimizer, "param_d2h_map")


def settle_host_gradients(optimizer, scale: float) -> None:
    """CPUOffloadOptimizer copied each gradient to the host as the backward pass finished it; what the
    loop did to the gradients after that reaches the host copies here: clipping (`scale`, as
    clip_grad_norm_ scaled the GPU's) and the zero gradient of a parameter no micro-batch reached
    (dist.sum_gradients), which AdamW still steps (its moments decay) as it would on the GPU."""
    for weight, host in optimizer.param_d2h_map.items():
        if weight not in optimizer.queue:   # not reached by the backward pass: copy its (clipped) gradient now
            host.grad.copy_(weight.grad)
            optimizer.queue[weight] = torch.cuda.current_stream().record_event()
        elif scale < 1.0:   # copied as the backward pass finished it (clipped_step waited for the copy)
            host.grad.mul_(scale)


def torchao_optim():
    """`torchao.optim` (a one-line error where torchao is not installed)."""
    if not import_torchao_quietly():
        raise ValueError("--optim 8-/4-bit and --dtype bfloat16 training need torchao: pip install torchao==0.18.0")
    import torchao.optim
    return torchao.optim


@functools.cache
def import_torchao_quietly() -> bool:
    """Import torchao, if installed, without the lines it logs about GPU kernels this machine cannot load
    and its deprecation warnings (peft imports torchao too: import this first). Whether it is there."""
    import logging
    import warnings
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching")
    # torchao registers more enums when transformers imports its submodules later; torch logs a
    # deprecation line for each: drop just those lines
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: "is an Enum subclass and is now natively supported" not in record.getMessage())
    return True


def state_bytes_per_parameter(optim: str, weights: torch.dtype) -> float:
    """The optimizer's two moments, in bytes a parameter (quantised blocks' scales included)."""
    return {"adamw_torch": 2 * weights.itemsize, "adamw_torch_8bit": 2 * (1 + 4 / 256),
            "adamw_torch_4bit": 2 * (0.5 + 4 / 128)}[optim]


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
    if offloaded(optimizer):   # the host's copies are read from the GPU's gradients before clipping scales them
        for copied in optimizer.queue.values():
            copied.synchronize()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    stepped = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
    if stepped:
        if offloaded(optimizer):   # clip_grad_norm_'s own factor, for the host's copies of the gradients
            scale = min(1.0, max_grad_norm / (float(grad_norm) + 1e-6)) if max_grad_norm else 1.0
            settle_host_gradients(optimizer, scale)
        optimizer.step()
        scheduler.step()
    else:
        tqdm.write(f"step {step}: non-finite loss or gradient, update skipped")
        if offloaded(optimizer):   # the skipped step's gradients must not reach the next one
            optimizer.queue.clear()
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
