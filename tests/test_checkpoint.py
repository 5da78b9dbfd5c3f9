
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm import checkpoint as ckpt


def test_checkpoint_loads_in_transformers_and_restores_training_state(model, tok, tmp_path):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()
    torch.manual_seed(123)
    path = ckpt.save_checkpoint(tmp_path, 7, model, tok, {"optimizer": optimizer.state_dict(), "data_position": 42})
    expected_draw = torch.rand(3)

    loaded = AutoModelForCausalLM.from_pretrained(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert AutoTokenizer.from_pretrained(path)("2+3").input_ids == tok("2+3").input_ids

    torch.manual_seed(999)
    state = ckpt.load_training_state(path)
    assert state["step"] == 7 and state["data_position"] == 42
    assert torch.equal(torch.rand(3), expected_draw)  # RNG is back where it was at save time
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_crash_during_save_leaves_previous_checkpoint_intact(model, tok, tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(tmp_path, 1, model, tok, {})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, 2, model, tok, {})
    assert not (tmp_path / "checkpoint-2").exists()          # only a .tmp folder, never the final name
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert AutoModelForCausalLM.from_pretrained(first) is not None


def test_keep_prunes_oldest_checkpoints(model, tok, tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, tok, {}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
