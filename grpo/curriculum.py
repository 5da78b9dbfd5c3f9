"""`--curriculum pass-rate`: draw training prompts where a group of G completions is most likely to
carry signal.

A group of G completions of a prompt with pass rate p gets advantages that are all 0 (no gradient)
when every completion passes or every one fails, so the chance that it carries signal is

    informative(p) = 1 - p^G - (1 - p)^G

0 at p = 0 and p = 1, largest at p = 1/2 (1 - 2^(1-G): 0.99 for G = 8). Each prompt's p is
estimated from its own groups with a Beta prior shared by the prompts of its kind (the `source`
column, which a mix such as arithmetic:3+3x4 sets to its part, else the built-in task's `level`, else
one kind for all):

    p_i = (passes_i + K * m_kind) / (trials_i + K),   m_kind = (passes_kind + 1) / (trials_kind + 2)

with K = 2 prior completions, so an unseen prompt starts at its kind's rate and its own groups take
over after a few. Prompts are drawn without replacement with probability proportional to

    (1 - UNIFORM) * informative(p_i) / sum_j informative(p_j) + UNIFORM / n

where the uniform share keeps every prompt reachable (none starves while its estimate is wrong).
A completion passes when its `accuracy` reward is 1. The counts are saved with each checkpoint and
restored on resume; every rank holds the same counts (each step's results are merged over ranks),
so every rank draws the same prompts.
"""
import torch

from common import dist
from lm.draw import mix32

PRIOR = 2.0     # K: prior strength, in completions
UNIFORM = 0.1   # share of the draw that ignores the estimates


def kind_of(row: dict) -> str:
    return str(row.get("source", row.get("level", "")))


class PassRateCurriculum:
    def __init__(self, rows: list[dict], group_size: int, seed: int):
        self.rows, self.G, self.seed = rows, group_size, seed
        self.kinds = [kind_of(r) for r in rows]
        self.counts: dict[str, list[float]] = {}   # problem -> [passes, trials]

    def pass_rates(self) -> torch.Tensor:
        """(n,) each prompt's estimated pass rate."""
        per_kind: dict[str, list[float]] = {}
        for row, kind in zip(self.rows, self.kinds):
            s, n = self.counts.get(row["problem"], (0.0, 0.0))
            k = per_kind.setdefault(kind, [0.0, 0.0])
            k[0] += s
            k[1] += n
        prior = {kind: (s + 1) / (n + 2) for kind, (s, n) in per_kind.items()}
        passes = torch.tensor([self.counts.get(r["problem"], (0.0, 0.0))[0] for r in self.rows], dtype=torch.float64)
        trials = torch.tensor([self.counts.get(r["problem"], (0.0, 0.0))[1] for r in self.rows], dtype=torch.float64)
        m = torch.tensor([prior[k] for k in self.kinds], dtype=torch.float64)
        return (passes + PRIOR * m) / (trials + PRIOR)

    def weights(self) -> torch.Tensor:
        """(n,) the draw's probabilities (they sum to 1)."""
        p = self.pass_rates()
        informative = 1 - p ** self.G - (1 - p) ** self.G
        return (1 - UNIFORM) * informative / informative.sum().clamp(min=1e-12) + UNIFORM / len(p)

    def draw(self, slot: int, count: int) -> list[dict]:
        """`count` distinct prompts for the slots slot.. of the run; the same on every rank."""
        generator = torch.Generator().manual_seed(int(mix32(self.seed * 7919 + slot)))
        picks = torch.multinomial(self.weights(), min(count, len(self.rows)), replacement=False, generator=generator)
        return [self.rows[i] for i in picks.tolist()]

    def update(self, results: list[tuple[str, int, int]]) -> None:
        """(problem, passes, completions) of groups sampled anywhere (merged over ranks)."""
        for problem, s, n in results:
            c = self.counts.setdefault(problem, [0.0, 0.0])
            c[0] += s
            c[1] += n

    def state_dict(self) -> dict:
        return {"counts": self.counts}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: list(v) for k, v in state["counts"].items()}


def pass_counts(prompts: list[dict], accuracy: list[float], G: int) -> list[tuple[str, int, int]]:
    """(problem, completions whose accuracy is 1, G) for each group of this rank, merged over ranks
    (every rank gets the same list, in rank order)."""
    mine = [(row["problem"], sum(a == 1.0 for a in accuracy[g * G:(g + 1) * G]), G) for g, row in enumerate(prompts)]
    everyone = dist.merge_dicts({dist.rank(): mine})
    return [item for r in sorted(everyone) for item in everyone[r]]
