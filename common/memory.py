"""What a run holds in memory: the peak it reached (logged every step as `peak_memory_gib`).

On a GPU the peak is `torch.cuda.max_memory_allocated` (tensors only: the CUDA context and the
allocator's cache come on top); on a CPU the process's peak resident set (`ru_maxrss`: every byte the
process has touched, the Python interpreter, libraries and loading included). Under torchrun the
largest of the ranks' peaks.
"""
import resource
import sys

import torch

from common import dist


def peak_memory_gib(device: torch.device | str = "cpu") -> float:
    """This process's peak so far, in GiB (see the module docstring); the largest over ranks."""
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        scale = 1 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return round(dist.all_max(peak / 2 ** 30), 3)
