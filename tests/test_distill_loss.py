"""Distillation loss against a 2-token, 3-word case worked by hand."""
import math

import pytest
import torch

from distill import distillation_loss

LN2, LN3 = math.log(2), math.log(3)


def case(scale=1.0):
    """Two labelled positions and one unlabelled (-100) with wild logits that must not count.
    position 0: teacher p = [0.5, 0.25, 0.25], student q = [0.25, 0.5, 0.25], label 1
    position 1: teacher p = [0.8, 0.1, 0.1],   student q = [1/3, 1/3, 1/3],   label 0
    Logits are scale * log(prob), so at temperature = scale the tempered distributions are p and q."""
    teacher = torch.tensor([[[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [0.98, 0.01, 0.01]]]).log() * scale
    student = torch.tensor([[[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.01, 0.01, 0.98]]]).log() * scale
    labels = torch.tensor([[1, 0, -100]])
    return student.requires_grad_(True), teacher.requires_grad_(True), labels


# KL(p||q), position 0: 0.5 ln 2 + 0.25 ln 0.5 + 0 = 0.25 ln 2 = 0.173287
# KL(p||q), position 1: 0.8 ln 2.4 + 0.2 ln 0.3 = 0.700375 - 0.240795 = 0.459580
# KL(q||p), position 0: 0.25 ln 2 = 0.173287;  position 1: (1/3)(ln(5/12) + 2 ln(10/3)) = 0.510826
# CE (temperature 1): position 0 -ln 0.5 = ln 2; position 1 -ln(1/3) = ln 3; mean 0.895880
FWD = (0.173287 + 0.459580) / 2   # 0.316434
REV = (0.173287 + 0.510826) / 2   # 0.342056
CE = (LN2 + LN3) / 2              # 0.895880


@pytest.mark.parametrize("kind, kd", [("forward_kl", FWD), ("reverse_kl", REV)])
def test_hand_computed_kl_and_total(kind, kd):
    student, teacher, labels = case()
    loss, stats = distillation_loss(student, teacher, labels, temperature=1.0, alpha=0.7, kind=kind)
    assert stats["kd"] == pytest.approx(kd, abs=1e-6)
    assert stats["ce"] == pytest.approx(CE, abs=1e-6)
    assert stats["tokens"] == 2                               # averaged over labelled tokens, not B
    # forward: 0.7 * 0.316434 + 0.3 * 0.895880 = 0.490268; reverse: 0.7 * 0.342056 + 0.268764 = 0.508203
    assert loss.item() == pytest.approx(0.7 * kd + 0.3 * CE, abs=1e-6)


def test_temperature_squared_scaling():
    # logits 2 ln p at T = 2 give back p and q: KD = 0.316434, times T^2 = 4 -> 1.265736 (alpha = 1)
    student, teacher, labels = case(scale=2.0)
    loss, stats = distillation_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    assert stats["kd"] == pytest.approx(FWD, abs=1e-6)
    assert loss.item() == pytest.approx(4 * FWD, abs=1e-5)


def test_jsd_by_hand_and_continuous_at_both_ends():
    student, teacher, labels = case()
    # beta 0.5, position 1: m = [0.566667, 0.216667, 0.216667]
    #   KL(p||m) = 0.8 ln(0.8/0.566667) + 0.2 ln(0.1/0.216667) = 0.121234
    #   KL(q||m) = (1/3)(ln(0.333/0.5667) + 2 ln(0.333/0.2167)) = 0.110313
    #   (0.5 * 0.121234 + 0.5 * 0.110313) / 0.25 = 0.463094;  position 0 likewise 0.169899
    _, stats = distillation_loss(student, teacher, labels, kind="jsd", beta=0.5)
    assert stats["kd"] == pytest.approx((0.463094 + 0.169899) / 2, abs=1e-5)
    near = lambda b: distillation_loss(student, teacher, labels, kind="jsd", beta=b)[1]["kd"]
    assert near(0.0) == pytest.approx(FWD, abs=1e-6) and near(1e-4) == pytest.approx(FWD, rel=1e-3)
    assert near(1.0) == pytest.approx(REV, abs=1e-6) and near(1 - 1e-4) == pytest.approx(REV, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jsd_limits_hold_within_1e5_of_both_ends_on_a_real_vocabulary(dtype):
    # 49,152 words (SmolLM2's vocabulary), 4 positions. Taking log m first and log p - log m after
    # cancelled: at beta = 1 - 1e-5 the old float32 code missed KL(q || p) by ~45% here (and cast
    # float64 inputs to float32). With d = log q - log p the small differences are computed directly.
    gen = torch.Generator().manual_seed(0)
    student, teacher = (0.5 * torch.randn(1, 4, 49152, generator=gen, dtype=dtype) for _ in range(2))
    labels = torch.zeros(1, 4, dtype=torch.long)
    loss = lambda kind, beta=0.5: distillation_loss(student, teacher, labels, kind=kind, beta=beta, alpha=1.0)[0]
    forward, reverse = loss("forward_kl"), loss("reverse_kl")
    assert forward.dtype == dtype and loss("jsd").dtype == dtype   # float64 is never cast down
    # the value at beta = 1 - eps differs from the limit by O(eps) in exact arithmetic: 1e-3 is loose
    assert loss("jsd", 1 - 1e-5).item() == pytest.approx(reverse.item(), rel=1e-3)
    assert loss("jsd", 1e-5).item() == pytest.approx(forward.item(), rel=1e-3)
    assert loss("jsd", 1 - 1e-6).item() == pytest.approx(reverse.item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_teacher_equal_to_student_gives_zero_kd(kind):
    logits = torch.randn(2, 3, 5)
    _, stats = distillation_loss(logits, logits.clone(), torch.zeros(2, 3, dtype=torch.long), kind=kind)
    assert abs(stats["kd"]) < 1e-6


def test_gradients_reach_the_student_only_and_chunking_changes_nothing():
    student, teacher, labels = case()
    loss, _ = distillation_loss(student, teacher, labels, temperature=3.0, chunk_size=1)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert student.grad[0, 2].abs().max() == 0                # the unlabelled position gets nothing
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 11, generator=g), torch.randn(3, 7, 11, generator=g)
    y = torch.randint(0, 11, (3, 7), generator=g)
    y[0, :3] = -100
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        a, _ = distillation_loss(s, t, y, kind=kind, temperature=2.0, chunk_size=4)
        b, _ = distillation_loss(s, t, y, kind=kind, temperature=2.0, chunk_size=10_000)
        assert a.item() == pytest.approx(b.item(), abs=1e-6)
