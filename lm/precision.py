"""Precision: the dtype the weights (and the optimizer's state) are stored in, and the dtype the
forward and backward passes compute in.

bfloat16 keeps 8 significant bits, so an update smaller than about 1/256 of a weight is rounded
away when AdamW writes it into bfloat16 weights: at lr 5e-6 most updates are that small (on a
576 x 576 layer, 10 AdamW steps changed 4.5% of the bfloat16 weights, 100% of the float32 ones).
So training on a GPU keeps float32 master weights and optimizer state and computes in bfloat16
under autocast ("mixed"), where every update lands and the matrix products still run at bfloat16
speed. Log-softmax and the losses run in float32 (lm/logprobs.py casts the logits).

    --dtype       weights    compute     for
    auto          float32    bfloat16    training on a GPU with bfloat16 (Ampere, Hopper, ...)
                  float32    float32     training on a CPU, or on a GPU without bfloat16 (T4, V100)
                  bfloat16   bfloat16    inference on a GPU (eval, sample, chat: no updates to lose)
    float32       float32    float32
    bf16-mixed    float32    bfloat16    (also on a CPU: that is how the tests check it)
    bfloat16      bfloat16   bfloat16    half the memory of weights, gradients and AdamW state; the
                                         update is rounded stochastically (common/optim.py), so one
                                         below ~1/256 of a weight lands in expectation
    float16       float16    float16     updates overflow or are lost: for inference only

`--optim adamw_torch_8bit` / `_4bit` quantise AdamW's two moments (common/optim.py). Bytes a parameter
of training state (weights + gradients + AdamW's moments; LoRA: only for the adapters):
    float32 / bf16-mixed + adamw_torch        4 + 4 + 8    = 16
    float32 / bf16-mixed + adamw_torch_8bit   4 + 4 + 2.03 = 10.0
    bfloat16 + adamw_torch                    2 + 2 + 4    = 8
    bfloat16 + adamw_torch_8bit               2 + 2 + 2.03 = 6.0
    bfloat16 + adamw_torch_4bit               2 + 2 + 1.06 = 5.1
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch

CHOICES = ("auto", "float32", "bf16-mixed", "bfloat16", "float16")
HELP = ("auto (training: float32 weights with bfloat16 compute on a GPU, float32 on a CPU), float32, "
        "bf16-mixed, or pure bfloat16 (half the memory of weights, gradients and AdamW state; updated with "
        "stochastic rounding, so updates smaller than ~1/256 of a weight land in expectation) / float16")
PURE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype          # parameters, gradients, optimizer state
    compute: torch.dtype          # the dtype products run in (autocast when it differs from weights)
    device_type: str = "cpu"

    @property
    def mixed(self) -> bool:
        return self.compute != self.weights

    def autocast(self):
        """The context the forward passes run in: autocast to `compute` when mixed, else nothing."""
        return torch.autocast(self.device_type, dtype=self.compute) if self.mixed else nullcontext()


def resolve_precision(dtype: str, device: torch.device, training: bool = True) -> Precision:
    """The Precision a `--dtype` flag means on `device` (see the table in the module docstring)."""
    if dtype not in CHOICES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(CHOICES)}")
    kind = device.type
    if dtype == "auto":
        if kind != "cuda" or not torch.cuda.is_bf16_supported():
            return Precision(torch.float32, torch.float32, kind)
        dtype = "bf16-mixed" if training else "bfloat16"
    if dtype == "bf16-mixed":
        return Precision(torch.float32, torch.bfloat16, kind)
    return Precision(PURE[dtype], PURE[dtype], kind)
