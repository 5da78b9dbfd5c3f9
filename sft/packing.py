"""Sequence packing: tokenised examples laid into full rows, with exact per-example attention.

A packed row of max_length 12 holding two examples and 2 free places (P prompt token, C completion
token, E the EOS that ends each answer):

    tokens     P P C C E | P C C C E              (example A | example B)
    positions  0 1 2 3 4 | 0 1 2 3 4
    targets    - C C E - | C C C E -              (what each position predicts; - is -100)

- Positions restart at 0 in every example, and no token attends across examples: `lm/attention.py`
  runs causal attention inside each example only (a new example wherever the position is 0), so a
  row costs the sum of its examples' squared lengths, not its own squared length. (Without it,
  given position ids and no attention mask, transformers builds the same block-diagonal causal mask
  as one L x L mask.)
- A micro-batch of several rows is collated padding-free: its rows laid end to end in one row, so
  no position is spent on padding (`collate_rows`); a row's free places are simply not there.
- Targets are shifted inside each example: the last token of an example predicts nothing, so an
  example's first token is never a target of the previous example.
- Loss is taken only on the assistant's tokens (the completion, EOS included); prompt and system
  tokens are -100.
- Best-fit decreasing: examples longest first, each into the open row with the least room left that
  still fits it (a new row when none does). Rows come out nearly full.
- An example longer than max_length is truncated (its completion cut at the end) or dropped; the
  caller is told how many of each.
"""
from dataclasses import dataclass, field

import torch

from lm.chat import render_conversation

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]   # unshifted: labels[t] = input_ids[t] where trained, else -100


@dataclass
class TokenizeReport:
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    dropped_rows: list[int] = field(default_factory=list)


def tokenize(tokenizer, conversations: list[list[dict]], max_length: int,
             overflow: str = "truncate") -> tuple[list[Example], TokenizeReport]:
    """Examples from conversations; `overflow` is "truncate" or "drop" for those over max_length."""
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    examples, report = [], TokenizeReport()
    for i, messages in enumerate(conversations):
        prompt, completion = render_conversation(tokenizer, messages)
        ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
        if len(ids) > max_length:
            if overflow == "drop" or len(prompt) >= max_length - 1:
                report.dropped += 1
                report.dropped_rows.append(i)
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            report.truncated += 1
        examples.append(Example(ids, labels))
        report.kept += 1
    return examples, report


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens (best-fit decreasing)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > capacity:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the row's {capacity}")
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            r = min(fits, key=lambda r: room[r])
            rows[r].append(i)
            room[r] -= lengths[i]
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def shifted_targets(labels: list[int]) -> list[int]:
    """What each position predicts within one example: the next label, -100 at the end."""
    return labels[1:] + [IGNORE]


@dataclass
class Batch:
    input_ids: torch.Tensor       # (R, L)
    position_ids: torch.Tensor    # (R, L) restart at 0 in each example
    targets: torch.Tensor         # (R, L) next-token targets, -100 where no loss
    attention_mask: torch.Tensor | None  # (R, L) for padded batches; None for packed ones

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel() if self.attention_mask is None else self.attention_mask.sum())


def collate_rows(rows: list[list[Example]]) -> Batch:
    """Packed rows (each a list of examples) into a batch of one padding-free row: the rows end to end.
    Attention stays inside each example (position ids restart), so this equals the rows side by side
    padded to the longest, without computing the padding."""
    ids, pos, tgt = [], [], []
    for ex in (ex for row in rows for ex in row):
        ids += ex.input_ids
        pos += list(range(len(ex.input_ids)))
        tgt += shifted_targets(ex.labels)
    t = lambda x: torch.tensor([x], dtype=torch.long)
    return Batch(t(ids), t(pos), t(tgt), None)


def collate_padded(examples: list[Example], pad_id: int) -> Batch:
    """The unpacked baseline: one example per row, right-padded to the longest, with an attention mask."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[r, :n] = torch.tensor(ex.input_ids)
        tgt[r, :n] = torch.tensor(shifted_targets(ex.labels))
        mask[r, :n] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, pos, tgt, mask)


def pack(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Rows of at most max_length tokens, each a list of examples (collate with `collate_rows`)."""
    groups = best_fit([len(ex.input_ids) for ex in examples], max_length)
    return [[examples[i] for i in group] for group in groups]
