"""The GRPO loss: a clipped surrogate with a KL penalty, three ways to average tokens, GSPO ratios.

Objective (DeepSeekMath arXiv 2402.03300, eq. 3), maximised; we minimise its negative. Per token t
of completion i:

    w_it = exp(logp_it - old_logp_it)                                   importance ratio
    l_it = -min(w_it * A_i, clip(w_it, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * k3_it
    k3_it = exp(ref_logp_it - logp_it) - (ref_logp_it - logp_it) - 1    (eq. 4: unbiased, >= 0)

Choices, named:
- `epsilon_high` (DAPO's clip-higher, arXiv 2503.14476) defaults to `epsilon`: symmetric clipping.
- The KL is the k3 estimator of KL(pi_theta || pi_ref), added to the loss per token (not to the
  reward), as in the paper. beta = 0 needs no reference model.
- `importance_sampling_level="sequence"` (GSPO, arXiv 2507.18071, eq. 7): one ratio per sequence,
  s_i = exp(mean over its tokens of (logp - old_logp)), used for every token of it.
- Aggregation over tokens, `loss_type`:
    "grpo"     (1/N) sum_i (1/|o_i|) sum_t l_it        per-sequence mean, then mean (the paper)
    "dr_grpo"  sum_i sum_t l_it / (N * max_completion_length)       Dr. GRPO: no length bias
    "dapo"     sum_i sum_t l_it / (number of completion tokens)     DAPO: token-level
  `normalizer` replaces the denominator (N, N * max_completion_length, or the token count), so
  micro-batches of one batch, each given the full batch's denominator, sum to the full-batch loss.
- With one update per batch old_logp is logp.detach(): w = 1, clipping never binds, and the
  gradient is the plain policy gradient A * grad(logp).
- Truncated importance sampling (`sampler_logp`, `tis_cap`; Yao et al. 2025, "Your efficient RL
  framework secretly brings you off-policy RL training"): when the tokens were drawn by a sampler
  whose probabilities differ from the trainer's (a bfloat16 copy, another kernel), the policy-gradient
  term of each token is weighted by min(exp(old_logp - sampler_logp), tis_cap), detached: the
  importance weight from the sampler's distribution to the trainer's, capped to bound the variance.
  The KL term is not weighted (it is an expectation under the trainer's own policy). `tis_logp`, when
  given, replaces old_logp in the weight: the trainer's log-probs without dropout (LoRA's), so the
  weight corrects the sampler, not the dropout noise of one forward pass.

Shapes: N sequences, T completion tokens. `mask` is 1 on completion tokens (up to the first EOS).
"""
import torch

from common.tokens import sequence_mean_of_means, sequence_means, token_mean

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              adv: torch.Tensor, mask: torch.Tensor, *, epsilon: float = 0.2,
              epsilon_high: float | None = None, beta: float = 0.0, loss_type: str = "grpo",
              max_completion_length: int | None = None, normalizer: float | None = None,
              importance_sampling_level: str = "token", sampler_logp: torch.Tensor | None = None,
              tis_cap: float | None = None, tis_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Scalar loss and stats (plain floats); see the module docstring for the formula."""
    N, T = logp.shape
    assert old_logp.shape == (N, T) and mask.shape == (N, T) and adv.shape == (N,), \
        (logp.shape, old_logp.shape, mask.shape, adv.shape)
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo" and max_completion_length is None and normalizer is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (or a normalizer)")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}")
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)

    log_ratio = logp - old_logp                                                   # (N, T)
    if importance_sampling_level == "sequence":
        log_ratio = sequence_means(log_ratio, mask)[:, None].expand(N, T)        # (N, T), one per row
    ratio = torch.exp(log_ratio)                                                  # (N, T)
    A = adv[:, None].to(logp.dtype)                                               # (N, 1)
    surrogate = torch.min(ratio * A, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    per_token = -surrogate                                                        # (N, T)
    if tis_cap is not None:
        if sampler_logp is None or tis_cap <= 0:
            raise ValueError("tis_cap needs sampler_logp and a cap > 0")
        trainer = old_logp if tis_logp is None else tis_logp
        tis = torch.exp(trainer - sampler_logp).clamp(max=tis_cap).detach()      # (N, T) TIS weights
        per_token = per_token * tis
    kl = None
    if beta != 0.0:
        delta = ref_logp - logp                                                   # (N, T)
        kl = torch.exp(delta) - delta - 1                                         # (N, T) k3
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        loss = sequence_mean_of_means(per_token, mask, normalizer)
    elif loss_type == "dr_grpo":
        loss = token_mean(per_token, mask, normalizer if normalizer is not None else N * max_completion_length)
    else:
        loss = token_mean(per_token, mask, normalizer)
    return loss, _stats(ratio, A, kl, mask, eps_low, eps_high)


@torch.no_grad()
def _stats(ratio, A, kl, mask, eps_low, eps_high) -> dict:
    """Fractions of completion tokens where the clip binds (low: w < 1-eps with A < 0; high:
    w > 1+eps_high with A > 0), the mean ratio and the mean k3 KL."""
    n = mask.sum().clamp(min=1.0)
    low = ((ratio < 1 - eps_low) & (A < 0)).to(mask.dtype)
    high = ((ratio > 1 + eps_high) & (A > 0)).to(mask.dtype)
    return {
        "clip_frac_low": ((low * mask).sum() / n).item(),
        "clip_frac_high": ((high * mask).sum() / n).item(),
        "clip_frac": (((low + high) * mask).sum() / n).item(),
        "ratio_mean": ((ratio * mask).sum() / n).item(),
        "kl": ((kl * mask).sum() / n).item() if kl is not None else 0.0,
    }


@torch.no_grad()
def sampler_mismatch(sampler_logp: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the trainer's log-probs of the sampled tokens are from the sampler's, over the masked
    (N, T) tokens: sums of |logp - sampler_logp| and of the k3 estimate of KL(sampler || trainer)
    (r - 1 - log r with r = pi_trainer / pi_sampler, unbiased for tokens drawn by the sampler), and
    the largest ratio r. Zero and 1 when the two agree."""
    log_r = (logp - sampler_logp).masked_fill(mask == 0, 0.0)                     # (N, T)
    return {"sampler_logp_gap": log_r.abs().sum().item(),
            "sampler_kl": (log_r.exp() - 1 - log_r).sum().item(),
            "sampler_ratio_max": log_r.masked_fill(mask == 0, float("-inf")).exp().max().item() if mask.any() else 1.0}
