"""Score 1,000 realistic completions with every reward and print the time each takes.

    .venv/bin/python bench/rewards_bench.py [--n 1000]

Completions are built from the arithmetic task's worked solutions: right and wrong answers, broken
formats, rambling text, LaTeX answers, long repetitive outputs. Target (issue 3): all rewards for
1,000 completions in under 10 s on the 2-core CPU. The math-verify worker's start-up (importing
sympy, once per process) is timed apart from the scoring.
"""
import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import REGISTRY, build_rewards  # noqa: E402
from rewards.verify import default_verifier  # noqa: E402
from tasks import arithmetic_rows  # noqa: E402


def realistic(rows, rng):
    completions = []
    for row in rows:
        worked, answer = row["worked"], row["answer"]
        kind = rng.randrange(6)
        if kind == 0:
            completions.append(worked)                                                   # right
        elif kind == 1:
            completions.append(worked.replace(f"<answer>{answer}</answer>", f"<answer>{answer + 1}</answer>"))
        elif kind == 2:
            completions.append(worked.replace("<answer>", "The answer is ").replace("</answer>", "."))
        elif kind == 3:
            completions.append(f"<think>{row['problem']} Let me think. " + "I think that " * 60
                               + f"</think><answer>$\\boxed{{{answer}}}$</answer>")
        elif kind == 4:
            completions.append(worked + "\nWait, let me double check. " * 3)
        else:
            completions.append(f"<think>Compute.</think><answer>\\frac{{{2 * answer}}}{{2}}</answer>")
    return completions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(0)
    rows = arithmetic_rows("train", args.n, seed=1, levels=(1, 2, 3, 4, 5))
    completions = realistic(rows, rng)
    columns = {"solution": [r["solution"] for r in rows], "problem": [r["problem"] for r in rows],
               "completion_length": [len(c) // 3 for c in completions]}
    start = time.perf_counter()
    default_verifier().check([("1", "1")])
    print(f"math-verify worker start-up: {time.perf_counter() - start:.2f} s (once per process)")
    total = 0.0
    for spec in build_rewards(list(REGISTRY), max_completion_length=256):
        start = time.perf_counter()
        values = spec.fn(completions, **columns)
        elapsed = time.perf_counter() - start
        total += elapsed
        print(f"{spec.name:<22} {elapsed:7.3f} s   mean reward {sum(values) / len(values):+.3f}")
    print(f"{'all rewards':<22} {total:7.3f} s for {args.n} completions (target < 10 s)")


if __name__ == "__main__":
    main()
