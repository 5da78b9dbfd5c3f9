"""The SFT data path, shared by `run.py sft` and `run.py distill`: conversations -> tokenised
examples -> packed rows (or single padded examples) -> an endless, reproducible stream of
micro-batches (shuffled per epoch by seed)."""
import math

import torch

from sft.packing import Batch, TokenizeReport, collate_padded, collate_rows, pack, tokenize
from tasks import DataError, load_conversations


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
        return collate_rows(group, self.pad_id) if self.packing else collate_padded(group, self.pad_id)


def prepare(tokenizer, dataset: str, limit: int, max_length: int, overflow: str, packing: bool,
            batch_size: int, seed: int) -> tuple[MicroBatches, TokenizeReport, int]:
    """(stream, tokenisation report, number of rows or examples)."""
    rows = load_conversations(dataset, "train", limit, seed=seed)
    examples, report = tokenize(tokenizer, [r["messages"] for r in rows], max_length, overflow)
    if not examples:
        raise DataError(f"{dataset}: no example fits in --max-length {max_length} (all {report.dropped} dropped)")
    units = pack(examples, max_length) if packing else examples
    return MicroBatches(units, batch_size, packing, tokenizer.pad_token_id, seed), report, len(units)
