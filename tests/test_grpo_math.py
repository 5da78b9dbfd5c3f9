"""GRPO advantages and loss against values computed by hand (arithmetic in the comments)."""
import math

import pytest
import torch

from grpo import group_advantages, grpo_loss

ATOL = 1e-6


# ------------------------------------------------------------------ advantages
def test_group_scale_one_right_of_four():
    # r = [1, 0, 0, 0]: mean 0.25, centered [0.75, -0.25, -0.25, -0.25]
    # Bessel std = sqrt((0.5625 + 3 * 0.0625) / 3) = sqrt(0.25) = 0.5; divide by 0.5 + 1e-4 = 0.5001
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0]), 4)
    assert torch.allclose(adv, torch.tensor([1.4997001, -0.4999000, -0.4999000, -0.4999000]), atol=ATOL)


def test_equal_rewards_give_exactly_zero_even_when_the_mean_rounds():
    # 0.1 * 3 / 3 != 0.1 in floating point; the group still gets exact zeros
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    # second group [1, 0, 0]: mean 1/3, std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.577350
    # adv = [0.666667, -0.333333, -0.333333] / 0.577450 = [1.154500, -0.577250, -0.577250]
    assert torch.allclose(adv[3:], torch.tensor([1.154500, -0.577250, -0.577250], dtype=torch.float64), atol=1e-6)


def test_batch_and_none_scales():
    r = torch.tensor([0.0, 2.0, 1.0, 1.0])  # groups [0, 2] and [1, 1]
    # group scale: [0, 2] has std sqrt(2) = 1.414214; +-1 / 1.414314 = +-0.707057
    assert torch.allclose(group_advantages(r, 2), torch.tensor([-0.707057, 0.707057, 0, 0]), atol=ATOL)
    # batch scale: std over all 4 = sqrt((1 + 1 + 0 + 0) / 3) = 0.816497; +-1 / 0.816597 = +-1.224594
    assert torch.allclose(group_advantages(r, 2, scale="batch"), torch.tensor([-1.224594, 1.224594, 0, 0]), atol=ATOL)
    # none (Dr. GRPO): centered only
    assert group_advantages(r, 2, scale="none").tolist() == [-1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("rewards, group_size, message", [
    (torch.tensor([1.0, 0.0]), 1, "group_size must be at least 2"),
    (torch.tensor([1.0, 0.0, 1.0]), 2, "not a multiple of group_size"),
    (torch.tensor([1.0, float("nan")]), 2, "must be finite"),
])
def test_advantage_errors_name_the_problem(rewards, group_size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size)


# ------------------------------------------------------------------ loss: clipping branches
def five_cases():
    # one token per sequence, old_logp = 0 so the ratio is exp(logp)
    ratio = torch.tensor([1.1, 1.5, 1.5, 0.5, 0.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    logp = ratio.log()[:, None].clone().requires_grad_(True)
    return logp, adv


def test_clipped_surrogate_each_side_each_sign_values_and_gradients():
    logp, adv = five_cases()
    loss, stats = grpo_loss(logp, torch.zeros_like(logp), None, adv, torch.ones_like(logp))
    # per token l = -min(w A, clip(w, 0.8, 1.2) A):
    #   w 1.1, A +1: inside          -> -1.1
    #   w 1.5, A +1: clipped at 1.2  -> -1.2   (no gradient)
    #   w 1.5, A -1: min(-1.5, -1.2) -> +1.5   (unclipped side wins: gradient flows)
    #   w 0.5, A -1: min(-0.5, -0.8) -> +0.8   (clipped at 0.8, no gradient)
    #   w 0.5, A +1: min(0.5, 0.8)   -> -0.5
    # grpo mean over 5 sequences: (-1.1 - 1.2 + 1.5 + 0.8 - 0.5) / 5 = -0.1
    assert loss.item() == pytest.approx(-0.1, abs=ATOL)
    loss.backward()
    # d l / d logp = -A w where the unclipped term is the min, else 0; then / 5
    # [-1.1, 0, +1.5, 0, -0.5] / 5
    assert torch.allclose(logp.grad[:, 0], torch.tensor([-0.22, 0.0, 0.3, 0.0, -0.1]), atol=ATOL)
    assert stats["clip_frac_low"] == pytest.approx(0.2) and stats["clip_frac_high"] == pytest.approx(0.2)
    assert stats["clip_frac"] == pytest.approx(0.4)
    assert stats["ratio_mean"] == pytest.approx((1.1 + 1.5 + 1.5 + 0.5 + 0.5) / 5)


def test_clip_higher_widens_only_the_upper_side():
    logp = torch.tensor([[math.log(1.25)], [math.log(0.7)]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones_like(logp)
    sym, _ = grpo_loss(logp, torch.zeros_like(logp), None, adv, mask, epsilon=0.2)
    dapo, _ = grpo_loss(logp, torch.zeros_like(logp), None, adv, mask, epsilon=0.2, epsilon_high=0.28)
    # symmetric: w 1.25 A+1 -> -1.2 (clipped); w 0.7 A-1 -> min(-0.7, -0.8) -> 0.8; mean (-1.2 + 0.8) / 2 = -0.2
    assert sym.item() == pytest.approx(-0.2, abs=ATOL)
    # clip-higher 0.28: 1.25 < 1.28 is inside -> -1.25; low side unchanged 0.8; mean -0.225
    assert dapo.item() == pytest.approx(-0.225, abs=ATOL)


# ------------------------------------------------------------------ loss: KL
def test_k3_kl_term_alone_value_and_gradient():
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    # delta = ref - logp = -ln 2; k3 = e^-ln2 + ln2 - 1 = 0.5 + 0.693147 - 1 = 0.193147; beta 0.1 -> 0.0193147
    loss, stats = grpo_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 1), beta=0.1)
    assert loss.item() == pytest.approx(0.0193147, abs=ATOL)
    assert stats["kl"] == pytest.approx(0.193147, abs=ATOL)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - 0.5 = 0.5; times beta = 0.05
    assert logp.grad.item() == pytest.approx(0.05, abs=ATOL)


def test_kl_is_zero_when_policy_equals_reference_and_beta_needs_ref():
    logp = torch.tensor([[-1.0, -2.0]])
    loss, stats = grpo_loss(logp, logp, logp, torch.zeros(1), torch.ones(1, 2), beta=0.5)
    assert loss.item() == 0.0 and stats["kl"] == 0.0
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        grpo_loss(logp, logp, None, torch.zeros(1), torch.ones(1, 2), beta=0.5)


# ------------------------------------------------------------------ loss: aggregation
def two_sequences():
    # ratio 1 everywhere (old = logp), so l = -A per token
    logp = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    return logp, adv, mask


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", 0.5),       # row means: -1 and +2 -> (-1 + 2) / 2 = 0.5
    ("dapo", -0.25),     # token sum (-3 + 2) / 4 tokens = -0.25
    ("dr_grpo", -0.125), # token sum -1 / (2 sequences * 4 max length) = -0.125
])
def test_loss_types(loss_type, expected):
    logp, adv, mask = two_sequences()
    loss, _ = grpo_loss(logp, logp, None, adv, mask, loss_type=loss_type, max_completion_length=4)
    assert loss.item() == pytest.approx(expected, abs=ATOL)


def test_a_group_of_equal_rewards_contributes_nothing():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0]), 3)
    logp = torch.randn(3, 4, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, torch.ones(3, 4))
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_micro_batches_with_full_batch_normalizer_equal_the_full_batch(loss_type, level):
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    logp = (torch.randn(N, T, generator=g) * 0.1 - 1).requires_grad_(True)
    old = logp.detach() + torch.randn(N, T, generator=g) * 0.2
    ref = logp.detach() + torch.randn(N, T, generator=g) * 0.2
    adv = torch.randn(N, generator=g)
    mask = (torch.rand(N, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    kw = dict(beta=0.04, loss_type=loss_type, max_completion_length=T, importance_sampling_level=level)
    full, _ = grpo_loss(logp, old, ref, adv, mask, **kw)
    full.backward()
    full_grad = logp.grad.clone()
    logp.grad = None
    normalizer = {"grpo": N, "dapo": mask.sum().item(), "dr_grpo": N * T}[loss_type]
    total = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part, _ = grpo_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows],
                            normalizer=normalizer, **kw)
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(logp.grad, full_grad, atol=1e-7)


# ------------------------------------------------------------------ loss: GSPO
def test_sequence_level_ratio_gspo():
    logp = torch.tensor([[math.log(1.2), math.log(1.5)]], requires_grad=True)
    old, mask = torch.zeros(1, 2), torch.ones(1, 2)
    # s = exp(mean(ln 1.2, ln 1.5)) = sqrt(1.8) = 1.341641
    # A = +1: clipped at 1.2 for both tokens -> loss -1.2, no gradient
    loss, _ = grpo_loss(logp, old, None, torch.tensor([1.0]), mask, importance_sampling_level="sequence")
    loss.backward()
    assert loss.item() == pytest.approx(-1.2, abs=ATOL) and logp.grad.abs().max().item() == 0.0
    logp.grad = None
    # A = -1: min(-1.341641, -1.2) -> l = 1.341641 on both tokens; mean 1.341641
    # d s / d logp_t = s / 2 = 0.670820 (token level would give 1.35 and gradients 0.6, 0.75)
    loss, _ = grpo_loss(logp, old, None, torch.tensor([-1.0]), mask, importance_sampling_level="sequence")
    loss.backward()
    assert loss.item() == pytest.approx(1.341641, abs=ATOL)
    assert torch.allclose(logp.grad, torch.tensor([[0.670820, 0.670820]]), atol=ATOL)
    token, _ = grpo_loss(logp, old, None, torch.tensor([-1.0]), mask)
    assert token.item() == pytest.approx(1.35, abs=ATOL)


def test_one_update_per_batch_is_the_plain_policy_gradient():
    # old = logp.detach(): w = 1 and d l / d logp = -A / |o| per token (grpo aggregation)
    logp = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), None, torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1], [1, 0]]))
    loss.backward()
    # row 0: -2 / 2 tokens / 2 rows = -0.5 each; row 1: +1 / 1 token / 2 rows = 0.5, masked token 0
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]), atol=ATOL)
