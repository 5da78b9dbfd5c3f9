"""Correctness rewards: `accuracy` and the length-scaled `cosine` reward."""
import math

from rewards import events
from rewards.text import as_text, column
from rewards.verify import default_verifier, extract_answer, is_unevaluated

UNVERIFIABLE = 0.5  # accuracy of a completion whose gold solution is missing or cannot be parsed


def correctness(completions: list, solution: list, reward: str = "accuracy", answer_format: str = "r1") -> list[float]:
    """1.0 correct, 0.0 wrong or no answer, UNVERIFIABLE (0.5) when the gold solution is missing or
    cannot be parsed, for every completion of that item, answered or not (a group with no signal).
    A completion with no answer is checked as the answer "" so that its gold is still parsed."""
    texts = [as_text(c, reward) for c in completions]
    golds = column({"solution": solution}, "solution", len(texts))
    answers = [extract_answer(t, answer_format) for t in texts]
    for i, a in enumerate(answers):
        if a and is_unevaluated(a):
            answers[i] = None  # arithmetic left undone is no answer
            events.count(f"{reward}/unevaluated")
    pending = [(i, str(g), a or "") for i, (g, a) in enumerate(zip(golds, answers)) if g is not None]
    out = [0.0] * len(texts)
    for i, g in enumerate(golds):
        if g is None:
            out[i] = UNVERIFIABLE  # no gold at all: as unparsable
            events.count(f"{reward}/gold_unparsable")
    statuses = default_verifier().check([(g, a) for _, g, a in pending])
    for (i, _, _), status in zip(pending, statuses):
        out[i] = {"correct": 1.0, "gold_unparsable": UNVERIFIABLE}.get(status, 0.0)
        if status not in ("correct", "wrong"):
            events.count(f"{reward}/{status}")
    return out


def accuracy_reward(completions: list, solution: list | None = None, answer_format: str = "r1",
                    **columns) -> list[float]:
    """1.0 if the completion's answer equals the gold solution, else 0.0.

    The answer is the content of the last <answer>...</answer> (no tag: the last \\boxed{}; neither:
    no answer, 0.0), both looked for only outside the reasoning: closed and unclosed <think> blocks
    are skipped (rewards/verify.py: `outside_reasoning`). An answer that still holds arithmetic on
    plain numbers (`9 + 1 + 9 * 6`, the question copied into the tag) is no answer: 0.0, counted as
    `accuracy/unevaluated` (math-verify would evaluate it, and GRPO learns to copy the question).
    Answer and gold are parsed with math-verify as LaTeX or as plain expressions (`14`, `$14$`,
    `\\boxed{14}`, `\\frac{1}{2}` vs 0.5) and compared with `verify`. A gold solution that cannot be
    parsed gives 0.5 (the tutorial's neutral value) to every completion, answered or not, and is counted as `accuracy/gold_unparsable`; a
    verification that runs out of its time limit gives 0.0 and is counted as `accuracy/timeout`.
    `answer_format` "boxed" or "auto" reads answers of models not trained on the tags (evaluation).
    """
    return correctness(completions, solution, answer_format=answer_format)


def get_cosine_scaled_reward(min_value_wrong: float = -0.5, max_value_wrong: float = -0.1,
                             min_value_correct: float = 0.8, max_value_correct: float = 1.0,
                             max_len: int = 1000):
    """Length-scaled correctness (the tutorial's code, with lengths past max_len clamped).

    With L the completion length in characters and c = cos(pi * min(L, max_len) / max_len):
        correct:  r = min_value_correct + 0.5 (max_value_correct - min_value_correct)(1 + c)
                  (shorter is better: 1.0 at L = 0, 0.8 at L >= max_len)
        wrong:    r = max_value_wrong + 0.5 (min_value_wrong - max_value_wrong)(1 + c)
                  (longer is penalised less: -0.5 at L = 0, -0.1 at L >= max_len)
    Correctness comes from the accuracy check. An item whose gold solution is missing or cannot be
    parsed gives 0.0 to every completion, whatever its length: the same value for the whole group,
    so no signal (scored as wrong, it would teach "longer is better"); counted as
    `cosine/gold_unparsable`.
    """
    def cosine_scaled_reward(completions: list, solution: list | None = None, **columns) -> list[float]:
        correct = correctness(completions, solution, reward="cosine")
        rewards = []
        for completion, acc in zip(completions, correct):
            if acc == UNVERIFIABLE:
                rewards.append(0.0)
                continue
            length = len(as_text(completion, "cosine"))
            c = math.cos(math.pi * min(length, max_len) / max_len)
            low, high = (min_value_correct, max_value_correct) if acc == 1.0 else (max_value_wrong, min_value_wrong)
            rewards.append(low + 0.5 * (high - low) * (1.0 + c))
        return rewards

    return cosine_scaled_reward
