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
  teacher and student are never all held at once.

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
    log_m = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), 0)
    jsd = beta * (p * (teacher_logp - log_m)).sum(-1) + (1 - beta) * (q * (student_logp - log_m)).sum(-1)
    return jsd / (beta * (1 - beta))


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
    kd_sum = student.new_zeros((), dtype=torch.float32)
    ce_sum = student.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_size):
        s = student[start:start + chunk_size].float()                             # (C, V)
        t = teacher[start:start + chunk_size].float()
        kd = kd_per_token(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), kind, beta)
        kd_sum = kd_sum + kd.sum()
        ce_sum = ce_sum + F.cross_entropy(s, targets[start:start + chunk_size], reduction="sum")
    kd_mean, ce_mean = kd_sum / n, ce_sum / n
    loss = alpha * temperature ** 2 * kd_mean + (1 - alpha) * ce_mean
    return loss, {"kd": kd_mean.item(), "ce": ce_mean.item(), "tokens": int(targets.numel())}
