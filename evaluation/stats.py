"""The statistics of an evaluation: intervals, pass@k, and the paired comparison of two models."""
import math


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n samples with c correct is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def per_problem_accuracy(records: list[dict]) -> list[float]:
    return [sum(a == 1.0 for a in r["accuracy"]) / len(r["accuracy"]) for r in records]


def paired(first: list[float], other: list[float], z: float = 1.96) -> dict:
    """`other` against `first`, per-problem accuracies of the same problems in the same order.
    diff: mean of d_i = other_i - first_i, with mean +- z * sd(d) / sqrt(n) (sd Bessel-corrected);
    gained/lost: problems where d_i > 0 / < 0; p: two-sided sign test, 2 * P(X <= min) for
    X ~ Binomial(gained + lost, 1/2), capped at 1 (ties carry no information and are left out)."""
    n = len(first)
    assert n == len(other) and n > 1, (n, len(other))
    d = [b - a for a, b in zip(first, other)]
    mean = sum(d) / n
    half = z * math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    gained, lost = sum(x > 0 for x in d), sum(x < 0 for x in d)
    m = gained + lost
    p = min(1.0, 2 * sum(math.comb(m, k) for k in range(min(gained, lost) + 1)) / 2 ** m) if m else 1.0
    return {"diff": mean, "diff_ci95": [mean - half, mean + half], "gained": gained, "lost": lost, "p_sign_test": p}
