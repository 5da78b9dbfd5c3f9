"""The SFT data path, shared by `run.py sft` and `run.py distill`: conversations -> tokenised
examples -> packed rows (or single padded examples) -> an endless, reproducible stream of
micro-batches (shuffled per epoch by seed)."""
import math
from dataclasses import dataclass

import torch

from common.config import arg
from lm.lora import LoraFlags
from lm.precision import CHOICES as DTYPES
from lm.precision import HELP as PRECISION_HELP
from common.optim import OFFLOAD_HELP, OPTIM_HELP, SCHEDULES, check_optim
from common.trackers import parse_report_to

from sft.packing import Batch, TokenizeReport, collate_padded, collate_rows, pack, tokenize
from tasks import DataError, load_conversations


@dataclass
class PackedTrainingFlags(LoraFlags):
    """Flags shared by the commands that train on the SFT data path (`run.py sft`, `run.py distill`);
    each command's config inherits them and redeclares the defaults it wants different."""
    dataset: str = arg("arithmetic", "conversations: arithmetic[:levels] (worked R1 solutions), a local "
                       "file (messages / conversations / prompt+completion), or a hub id")
    train_examples: int = arg(2000, "examples to use (the built-in task generates this many)")
    max_length: int = arg(4096, "tokens per packed row (and the longest example kept)")
    packing: bool = arg(True, "pack examples into full rows (--no-packing: one padded example per row)")
    batch_size: int = arg(1, "rows per micro-batch (packed rows, or examples without packing)")
    gradient_accumulation_steps: int = arg(8, "micro-batches per optimizer step")
    learning_rate: float = arg(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    warmup_ratio: float = arg(0.05, "share of steps spent warming up linearly")
    lr_scheduler: str = arg("cosine", "constant, linear or cosine decay after warmup", aliases=["--lr-scheduler-type", "--lr_scheduler_type"])
    max_grad_norm: float = arg(1.0, "clip the gradient norm to this (0: no clipping)")
    max_steps: int = arg(0, "optimizer steps")
    max_minutes: float = arg(0.0, "stop (with a checkpoint) after the step that passes this wall-clock budget; 0: none")
    report_to: str = arg("none", "experiment trackers besides metrics.jsonl: none, tensorboard, wandb, trackio "
                         "(comma-separated for several; common/trackers.py)")
    fsdp: bool = arg(False, "shard weights, gradients and AdamW state over the torchrun processes (FSDP2)")
    dtype: str = arg("auto", PRECISION_HELP)
    optim: str = arg("adamw_torch", OPTIM_HELP)
    offload_optimizer: bool = arg(False, OFFLOAD_HELP)
    device: str = arg("auto", "auto, cpu, cuda")
    seed: int = arg(0, "seed for data order")
    output_dir: str = arg("runs/sft", "where config, metrics, checkpoints and plots go")
    save_every: int = arg(50, "checkpoint every k steps (and at the end)", aliases=["--save-steps", "--save_steps"])
    keep_checkpoints: int = arg(2, "how many recent checkpoints to keep",
                                aliases=["--save-total-limit", "--save_total_limit"])
    eval_every: int = arg(0, "held-out eval every k steps (0: before and after only; -1: never)")
    eval_dataset: str = arg("arithmetic", "math dataset for the held-out eval (its test split)")
    eval_problems: int = arg(100, "held-out problems per eval")
    eval_max_new_tokens: int = arg(192, "token budget per eval completion")
    resume: str = arg("", "a run folder (or checkpoint folder) to continue exactly")
    plan: bool = arg(False, "print the predicted peak memory of this run by component on this device (GPU memory "
                            "or RAM), what fits, and train nothing")
    overwrite: bool = arg(False, "start afresh in an --output-dir that holds another run: removes its "
                          "checkpoints and logs (without it such a folder is refused)")

    def __post_init__(self):
        if self.lr_scheduler not in SCHEDULES:
            raise ValueError(f"--lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        check_optim(self.optim, self.fsdp, self.offload_optimizer)
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite removes one: choose one")
        parse_report_to(self.report_to)
        if self.use_peft and self.fsdp:
            raise ValueError("--use-peft is not supported with --fsdp")
        if min(self.batch_size, self.gradient_accumulation_steps, self.max_length, self.save_every) < 1:
            raise ValueError("--batch-size, --gradient-accumulation-steps, --max-length and --save-every must be >= 1")


class MicroBatches:
    """Micro-batch number `position` of the stream, the same on every run with the same seed."""

    def __init__(self, units: list, batch_size: int, packing: bool, pad_id: int, seed: int):
        self.units, self.batch_size, self.packing, self.pad_id, self.seed = units, batch_size, packing, pad_id, seed
        self.per_epoch = math.ceil(len(units) / batch_size)
        self._epoch, self._batches = None, None

    def __getitem__(self, position: int) -> Batch:
        epoch, index = divmod(position, self.per_epoch)
        if epoch != self._epoch:
            order = torch.randperm(len(self.units), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
            shuffled = [self.units[i] for i in order.tolist()]
            self._epoch = epoch
            self._batches = [shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        group = self._batches[index]
        return collate_rows(group) if self.packing else collate_padded(group, self.pad_id)


def prepare(tokenizer, dataset: str, limit: int, max_length: int, overflow: str, packing: bool,
            batch_size: int, seed: int) -> tuple[MicroBatches, TokenizeReport, int]:
    """(stream, tokenisation report, number of rows or examples)."""
    rows = load_conversations(dataset, "train", limit, seed=seed)
    examples, report = tokenize(tokenizer, [r["messages"] for r in rows], max_length, overflow)
    if not examples:
        raise DataError(f"{dataset}: no example fits in --max-length {max_length} (all {report.dropped} dropped)")
    units = pack(examples, max_length) if packing else examples
    return MicroBatches(units, batch_size, packing, tokenizer.pad_token_id, seed), report, len(units)
