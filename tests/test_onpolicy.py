"""On-policy distillation: the loss by hand on a two-token vocabulary, then the loop."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from distill.loss import distillation_loss
from distill.onpolicy import is_on_policy
from distill.train import DistillConfig
from distill.train import main as distill


def test_reverse_kl_on_two_tokens_by_hand():
    # student q = (1/2, 1/2), teacher p = (3/4, 1/4)
    student = torch.zeros(1, 1, 2, requires_grad=True)
    teacher = torch.tensor([[[math.log(3.0), 0.0]]])
    loss, stats = distillation_loss(student, teacher, torch.tensor([[0]]), temperature=1.0, alpha=1.0,
                                    kind="reverse_kl")
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)        # 0.143841
    assert loss.item() == pytest.approx(kl, abs=1e-6) and stats["ce"] == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()   # d KL(q || p) / d z_i = q_i (log q_i - log p_i - KL)
    expected = [0.5 * (math.log(0.5 / 0.75) - kl), 0.5 * (math.log(0.5 / 0.25) - kl)]   # -0.274653, +0.274653
    assert student.grad[0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    # the label does not matter with alpha = 1: no cross-entropy term
    other, _ = distillation_loss(student, teacher, torch.tensor([[1]]), temperature=1.0, alpha=1.0, kind="reverse_kl")
    assert other.item() == pytest.approx(kl, abs=1e-6)


def test_off_policy_share_is_a_keyed_draw():
    draws = [is_on_policy(0, step, slot, 0.25) for step in range(50) for slot in range(8)]
    assert 0.68 < sum(draws) / len(draws) < 0.82
    assert draws == [is_on_policy(0, step, slot, 0.25) for step in range(50) for slot in range(8)]
    assert all(is_on_policy(0, s, 0, 0.0) for s in range(20)) and not any(is_on_policy(0, s, 0, 1.0) for s in range(20))


ON_POLICY = dict(teacher="tiny", student_from_teacher_layers="1", train_examples=16, max_length=700, max_steps=4,
                 gradient_accumulation_steps=2, learning_rate=1e-3, eval_every=-1, save_every=2, keep_checkpoints=5,
                 on_policy=True, on_policy_prompts=3, on_policy_max_new_tokens=10,
                 lr_scheduler="constant", warmup_ratio=0.0)  # a run cut at step 2 has the same schedule


def test_the_on_policy_loop_trains_writes_and_resumes_exactly(tmp_path):
    config = DistillConfig(**ON_POLICY, output_dir=str(tmp_path / "full"))
    assert config.kind == "reverse_kl"
    distill(config)
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["on_policy_frac"] for m in full] == [1.0] * 4
    assert all(m["loss"] == pytest.approx(m["kd"], rel=1e-6) for m in full)   # no cross-entropy term
    assert all(m["kd"] > 0 and m["tokens"] > 0 for m in full)
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-2").state_dict()
    end = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-4").state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start)        # the student moved
    cut = tmp_path / "cut"
    distill(DistillConfig(**{**ON_POLICY, "max_steps": 2}, output_dir=str(cut)))
    distill(DistillConfig(**ON_POLICY, output_dir="x", resume=str(cut)))
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(full[2:], again[2:]):
        for key in ("loss", "kd", "tokens", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)
    mixed = DistillConfig(**{**ON_POLICY, "max_steps": 3, "off_policy_fraction": 0.5}, output_dir=str(tmp_path / "mix"))
    distill(mixed)
    fractions = [json.loads(line)["on_policy_frac"] for line in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()]
    assert fractions == [sum(is_on_policy(0, s, 2 * s + j, 0.5) for j in range(2)) / 2 for s in range(3)]
