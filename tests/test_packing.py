"""Packing: exact per-example attention, targets that never cross examples, truncation counted."""
import pytest
import torch

from lm.loading import tiny_model
from sft.loss import sft_loss
from sft.packing import IGNORE, best_fit, collate_padded, collate_rows, pack, tokenize


def conversations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a = torch.randint(1, 99, (2,), generator=g).tolist()
        out.append([{"role": "user", "content": f"What is {a[0]} + {a[1]}?" + " pad" * (i % 3)},
                    {"role": "assistant", "content": f"<think>add</think><answer>{a[0] + a[1]}</answer>" * (1 + i % 2)}])
    return out


def test_best_fit_by_hand():
    # lengths 7, 5, 4, 3, 1 into rows of 8: 7 opens row 0 (room 1); 5 opens row 1 (room 3);
    # 4 opens row 2 (room 4); 3 best fits row 1 (room 3 -> 0); 1 best fits row 0 (room 1 -> 0)
    assert best_fit([4, 7, 1, 5, 3], 8) == [[1, 2], [3, 4], [0]]
    with pytest.raises(ValueError, match="more than the row's 8"):
        best_fit([9], 8)


def test_targets_positions_and_labels_in_a_packed_row(tok):
    examples, _ = tokenize(tok, conversations(2), max_length=10_000)
    batch = collate_rows([examples])
    n0 = len(examples[0].input_ids)
    assert batch.position_ids[0, n0] == 0 and batch.position_ids[0, n0 - 1] == n0 - 1   # restart
    assert batch.targets[0, n0 - 1] == IGNORE          # A's last token never predicts B's first
    # only assistant tokens are targets: the first target is the first completion token,
    # predicted from the last prompt token; the EOS closing each answer is a target
    first = examples[0].labels.index(next(l for l in examples[0].labels if l != IGNORE))
    assert (batch.targets[0, :first - 1] == IGNORE).all() and batch.targets[0, first - 1] != IGNORE
    assert batch.targets[0, n0 - 2] == tok.eos_token_id


def test_overlong_examples_are_truncated_or_dropped_and_counted(tok):
    convs = conversations(3)
    limit = len(tokenize(tok, convs[:1], 10_000)[0][0].input_ids) - 3
    ex, report = tokenize(tok, convs, max_length=limit)
    assert report.truncated >= 1 and report.kept == 3 and all(len(e.input_ids) <= limit for e in ex)
    _, report = tokenize(tok, convs, max_length=limit, overflow="drop")
    assert report.dropped >= 1 and report.kept + report.dropped == 3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_one_by_one(tok, attn):
    model = tiny_model(tok, seed=1)
    model.config._attn_implementation = attn
    examples, _ = tokenize(tok, conversations(5), max_length=10_000)
    rows = pack(examples, max_length=2 * max(len(e.input_ids) for e in examples))
    assert len(rows) < len(examples)  # something was packed together
    total_targets = sum(sum(l != IGNORE for l in e.labels) for e in examples)

    packed_loss = sum(sft_loss(model, collate_rows([row]), normalizer=total_targets)
                      for row in rows)
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # one by one, no padding at all: the token-weighted mean over all examples
    nll_sum, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex.input_ids])
        logits = model(ids).logits[0, :-1]
        labels = torch.tensor(ex.labels[1:])
        keep = labels != IGNORE
        nll_sum = nll_sum + torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
        count += int(keep.sum())
    reference = nll_sum / count
    reference.backward()
    assert count == total_targets
    assert packed_loss.item() == pytest.approx(reference.item(), abs=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(packed_grads[name], p.grad, atol=1e-5), name


def test_padded_batch_matches_packed_and_accumulation_matches_one_batch(tok):
    model = tiny_model(tok, seed=2)
    examples, _ = tokenize(tok, conversations(6), max_length=10_000)
    n = sum(sum(l != IGNORE for l in e.labels) for e in examples)
    one = sft_loss(model, collate_rows(pack(examples, 10_000)))   # everything in one row
    one.backward()
    full = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    # accumulation: three padded micro-batches, each given the whole step's token count
    parts = [sft_loss(model, collate_padded(examples[i:i + 2], tok.pad_token_id), normalizer=n)
             for i in range(0, 6, 2)]
    for part in parts:
        part.backward()
    assert sum(p.item() for p in parts) == pytest.approx(one.item(), abs=1e-5)
    for k, p in model.named_parameters():
        assert torch.allclose(full[k], p.grad, atol=1e-5), k
