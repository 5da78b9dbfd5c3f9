"""Several processes (torchrun): the few helpers the training loops call, the same with one process or N.

`python run.py ...` is one process with no process group: every helper is then a no-op (rank 0 of 1).
`torchrun --nproc_per_node N run.py ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` then joins
the process group (NCCL on GPUs, gloo on a CPU) and each helper talks to it.

    init(device)         join the group if torchrun started us; this rank's device ("auto" -> cuda:LOCAL_RANK)
    rank(), world()      this process's index and the number of processes
    is_main()            rank 0: it alone writes logs, samples, plots and checkpoints and shows progress
    my_slice(n, what)    this rank's contiguous block of range(n); n must divide by the world size
    all_sum(x), all_max  a number summed over ranks, or their largest (a float comes back)
    any_rank(flag)       True on every rank if it is True on any: decisions to skip or stop are collective
    sum_gradients(model) every parameter's gradient summed over ranks, once per optimizer step (a
                         parameter with none gets zeros first, also with one process); a model
                         sharded by --fsdp (lm/sharding.py) has had them summed in its backward
    barrier()            wait for every rank (rank 0 writing a checkpoint, say)
    sum_dicts, std_over_ranks: metrics and statistics of the whole step
    merge_dicts          every rank's share of a result (evaluation records), on every rank

Why gradients are summed by hand rather than by DistributedDataParallel's hooks: ranks may run
different numbers of backward passes in one step (GRPO skips completions whose advantage is 0, a
micro-batch with a non-finite loss stops early), and DDP's hooks then wait for a backward that never
comes. One all-reduce per step after all micro-batches cannot hang that way, and costs the same.
Each rank's loss is its share of the full batch's loss (the normalisers are global), so the summed
gradient is the single-process gradient.
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from common.config import ConfigError

TIMEOUT = timedelta(seconds=int(os.environ.get("R1_DIST_TIMEOUT", "600")))  # a hang fails instead of waiting


def launched() -> bool:
    """True when torchrun started this process (with more than one process or not)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "auto") -> str:
    """Join the process group when launched by torchrun (once); returns the device string to use."""
    if not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return f"cuda:{local}" if cuda else ("cpu" if device == "auto" else device)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def my_slice(n: int, what: str) -> range:
    """This rank's contiguous block of range(n)."""
    if n % world():
        raise ConfigError(f"{what} ({n}) must divide by the number of processes ({world()})")
    size = n // world()
    return range(rank() * size, (rank() + 1) * size)


def _reduce(value: float, op) -> float:
    if not active():
        return float(value)
    tensor = torch.tensor(float(value), dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def all_sum(value: float) -> float:
    """A number summed over ranks (in float64)."""
    return _reduce(value, dist.ReduceOp.SUM)


def all_max(value: float) -> float:
    """The largest of every rank's number."""
    return _reduce(value, dist.ReduceOp.MAX)


def any_rank(flag: bool) -> bool:
    return all_sum(1.0 if flag else 0.0) > 0


def sum_gradients(model) -> None:
    """All-reduce SUM of every gradient, flattened into one buffer (one collective per step). A
    parameter no micro-batch reached (GRPO with every advantage 0) gets a zero gradient first, on every
    rank, so all ranks reduce the same tensors and AdamW steps as if it had been trained with 0."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    if not active() or isinstance(model, FSDPModule):  # FSDP reduce-scattered them in the backward pass
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def barrier() -> None:
    if active():
        dist.barrier()


def sum_dicts(values: dict) -> dict:
    """{name: number} summed over ranks, name by name (a name missing on a rank counts 0 there)."""
    if not active():
        return dict(values)
    gathered = [None] * world()
    dist.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    total: dict = {}
    for part in gathered:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def merge_dicts(mine: dict) -> dict:
    """Every rank's dict merged into one, on every rank (each rank holds different keys)."""
    if not active():
        return dict(mine)
    gathered = [None] * world()
    dist.all_gather_object(gathered, mine)
    return {k: v for part in gathered for k, v in part.items()}


def std_over_ranks(values: torch.Tensor) -> float:
    """The sample standard deviation (Bessel-corrected, as torch.std) of all ranks' values together."""
    v = values.double()
    n, total, squares = (all_sum(x) for x in (float(v.numel()), v.sum().item(), (v * v).sum().item()))
    return max(0.0, (squares - total * total / n) / max(1.0, n - 1)) ** 0.5
