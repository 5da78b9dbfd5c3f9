"""Evaluation, shared by the training loops (a held-out score every k steps), `run.py eval`,
`run.py sample` and the pipeline: generate completions, score them with the rewards, summarise.

- `scoring`: `generate_and_score` (completions and rewards per problem; under torchrun each rank
  takes every world-th problem and all ranks get every record back), `evaluate`, `eval_metrics`
  (the loops' `eval/...` numbers), `summarize`.
- `stats`: Wilson intervals, pass@k, the paired comparison of two models on the same problems.
"""
from evaluation.scoring import EVAL_REWARDS, eval_metrics, evaluate, generate_and_score, summarize
from evaluation.stats import paired, pass_at_k, per_problem_accuracy, wilson

__all__ = ["EVAL_REWARDS", "eval_metrics", "evaluate", "generate_and_score", "summarize", "paired", "pass_at_k",
           "per_problem_accuracy", "wilson"]
