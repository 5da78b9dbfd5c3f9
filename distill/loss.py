"""Logit distillation: match the student's next-token distributions to the teacher's.

    total = alpha * T^2 * KD  +  (1 - alpha) * CE

- KD, at temperature T on both sides, p = softmax(teacher / T), q = softmax(student / T):
    "forward_kl"  KL(p || q) = sum_v p (log p - log q)       (Hinton et al. 2015; the tutorial's)
    "reverse_kl"  KL(q || p) = sum_v q (log q - log p)       (mode seeking, as in MiniLLM)
    "jsd"         generalised Jensen-Shannon with weight beta, m = beta p + (1 - beta) q:
                  [beta KL(p || m) + (1 - beta) KL(q || m)] / (beta (1 - beta))
                  Divided by beta (1 - beta) it tends to KL(p || q) as beta -> 0 and to
                  KL(q || p) as beta -> 1, and those are its values at 0 and 1: continuous at both
                  ends (TRL's undivided version drops to ~0 next to each end, then jumps).
- T^2 keeps the KD gradient's size independent of T (Hinton et al.).
- CE is the usual cross-entropy with the labels at temperature 1.
- Both are averaged over the labelled tokens (labels != -100), not over the batch dimension: the
  tutorial's `kl_div(reduction="batchmean")` on (B, T, V) divides by B and counts prompt and padding.
- The teacher's logits are detached: gradients reach the student only.
- Rows are processed `chunk_size` tokens at a time, so the float32 (tokens, V) distributions of
  teacher and student are never all held at once. Logits in bfloat16/float16 are computed in
  float32, float64 logits in float64.

Shapes: B sequences, T positions, V vocabulary, M labelled positions. labels[b, t] is the token that
logits[b, t] predicts (already shifted).
"""
import math

import torch
import torch.nn.functional as F

KINDS = ("forward_kl", "reverse_kl", "jsd")


def kd_per_token(student_logp: torch.Tensor, teacher_logp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """(M, V) log-probabilities -> (M,) divergence per token."""
    p, q = teacher_logp.exp(), student_logp.exp()
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return (p * (teacher_logp - student_logp)).sum(-1)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return (q * (student_logp - teacher_logp)).sum(-1)
    return jsd_scaled(teacher_logp, student_logp, beta)


def jsd_scaled(teacher_logp: torch.Tensor, student_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """[beta KL(p || m) + (1 - beta) KL(q || m)] / (beta (1 - beta)), m = beta p + (1 - beta) q, as

        sum_v p (log p - log m) / (1 - beta)  +  sum_v q (log q - log m) / beta.

    Near beta = 1 the first term is a difference of order (1 - beta) divided by (1 - beta): taking
    log m first and then log p - log m loses it to rounding (1-5% of KL(q || p) at beta = 1 - 1e-5
    in float32). So each difference is computed directly from d = log q - log p:
        log m - log p = logaddexp(log beta, log(1 - beta) + d)
        log m - log q = logaddexp(log beta - d, log(1 - beta))
    whose rounding error is relative to the small term, not to log m (symmetrically near beta = 0).
    """
    d = student_logp - teacher_logp                                               # (M, V) log q - log p
    log_b = torch.full_like(d, math.log(beta))
    log_1mb = torch.full_like(d, math.log1p(-beta))
    m_over_p = torch.logaddexp(log_b, log_1mb + d)                                # log m - log p
    m_over_q = torch.logaddexp(log_b - d, log_1mb)                                # log m - log q
    return (-(teacher_logp.exp() * m_over_p).sum(-1) / (1 - beta)
            - (student_logp.exp() * m_over_q).sum(-1) / beta)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float = 1.0, alpha: float = 0.7, kind: str = "forward_kl", beta: float = 0.5,
                      chunk_size: int = 1024, normalizer: float | None = None) -> tuple[torch.Tensor, dict]:
    """(loss, stats) for (B, T, V) logits and (B, T) labels; see the module docstring.

    `normalizer` replaces the labelled-token count (gradient accumulation, as in common/tokens.py).
    """
    assert student_logits.shape == teacher_logits.shape, (student_logits.shape, teacher_logits.shape)
    assert labels.shape == student_logits.shape[:-1], (labels.shape, student_logits.shape)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= beta <= 1.0 or not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha, beta <= 1 and temperature > 0 (alpha={alpha}, beta={beta}, T={temperature})")
    keep = labels != -100                                                          # (B, T)
    student, teacher, targets = student_logits[keep], teacher_logits[keep].detach(), labels[keep]  # (M, V), (M,)
    n = normalizer if normalizer is not None else max(1, targets.numel())
    dtype = torch.promote_types(student.dtype, torch.float32)  # float32 at least; float64 stays float64
    kd_sum = student.new_zeros((), dtype=dtype)
    ce_sum = student.new_zeros((), dtype=dtype)
    for start in range(0, targets.numel(), chunk_size):
        s = student[start:start + chunk_size].to(dtype)                           # (C, V)
        t = teacher[start:start + chunk_size].to(dtype)
        kd = kd_per_token(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), kind, beta)
        kd_sum = kd_sum + kd.sum()
        ce_sum = ce_sum + F.cross_entropy(s, targets[start:start + chunk_size], reduction="sum")
    kd_mean, ce_mean = kd_sum / n, ce_sum / n
    loss = alpha * temperature ** 2 * kd_mean + (1 - alpha) * ce_mean
    return loss, {"kd": kd_mean.item(), "ce": ce_mean.item(), "tokens": int(targets.numel())}
