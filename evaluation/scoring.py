"""Generate completions for held-out problems, score them with the rewards, and summarise.

For each problem, `samples_per_problem` completions are sampled (greedy when temperature is 0) and
scored with EVAL_REWARDS. The summary gives accuracy with a 95% Wilson interval over problems,
format rate, reasoning-steps score, language consistency, mean completion length in tokens, the
share truncated at the budget, and pass@k for k = 1..samples_per_problem (evaluation/stats.py).
"""
import dataclasses
import functools
import time

from tqdm import tqdm

from common import dist
from evaluation.stats import pass_at_k, per_problem_accuracy, wilson
from lm import sample, sharding
from lm.chat import encode_prompt
from lm.draw import prompt_keys
from rewards import accuracy_reward, build_rewards, score

EVAL_REWARDS = ["accuracy", "format", "reasoning_steps", "language_consistency"]


def eval_rewards(answer_format: str = "r1") -> list:
    """EVAL_REWARDS, the accuracy reading answers in `answer_format` (rewards/verify.py: "r1" the
    <answer> tag, else the last \\boxed{}; "boxed"; "auto" adds a final "the answer is N")."""
    specs = build_rewards(EVAL_REWARDS)
    accuracy = functools.partial(accuracy_reward, answer_format=answer_format)
    return [dataclasses.replace(s, fn=accuracy) if s.name == "accuracy" and answer_format != "r1" else s
            for s in specs]


def generate_and_score(model, tokenizer, rows: list[dict], specs, *, samples_per_problem: int = 1,
                       temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256,
                       batch_size: int = 32, seed: int = 0, progress: bool = True, desc: str = "sample") -> list[dict]:
    """One record per row: its completions, their lengths, truncation, each reward and the weighted score,
    in the rows' order. Prompts are batched by length (less padding). Row i's completions draw their
    random numbers from the key (seed, i) (lm/draw.py), so they do not depend on the batch or on the
    number of processes: under torchrun each rank generates rows rank, rank + world, ... and every
    rank gets all the records back."""
    n = samples_per_problem
    mine = list(range(dist.rank(), len(rows), dist.world()))
    prompts = {i: encode_prompt(tokenizer, rows[i]["problem"]) for i in mine}
    order = sorted(mine, key=lambda i: len(prompts[i]))
    records = {}
    was_training = model.training
    model.eval()
    policy = sharding.gathered(model)  # under --fsdp a full copy, gathered once for every batch
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False,
                  disable=not progress or not dist.is_main()):
        idx = order[b:b + batch_size]
        out = sample(policy, [prompts[i] for i in idx], group_size=n, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, keys=prompt_keys(seed, 0, idx),
                     cuda_graphs=None if policy is model else False)  # a copy used once captures no graphs
        lengths = out.completion_mask.sum(-1).tolist()
        ids = [row[:length] for row, length in zip(out.completion_ids.tolist(), lengths)]
        texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        columns = {k: [rows[i][k] for i in idx for _ in range(n)] for k in ("problem", "solution")}
        columns.update(completion_length=lengths, completion_ids=ids)
        per_reward, total = score(specs, texts, columns)
        for j, i in enumerate(idx):
            s = slice(j * n, (j + 1) * n)
            records[i] = {"problem": rows[i]["problem"], "solution": rows[i]["solution"],
                          "completions": texts[s], "lengths": lengths[s], "truncated": out.truncated[s].tolist(),
                          **{name: values[s] for name, values in per_reward.items()}, "score": total[s]}
    model.train(was_training)
    everyone = dist.merge_dicts(records)  # {row index: record} of every rank
    return [everyone[i] for i in range(len(rows))]


def evaluate(model, tokenizer, rows: list[dict], *, samples_per_problem: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 32, seed: int = 0,
             progress: bool = True, answer_format: str = "r1") -> tuple[dict, list[dict]]:
    """(metrics, sample records) for one model on `rows` (each with `problem` and `solution`)."""
    start = time.perf_counter()
    records = generate_and_score(model, tokenizer, rows, eval_rewards(answer_format),
                                 samples_per_problem=samples_per_problem, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                 progress=progress, desc="eval")
    return summarize(records, samples_per_problem, time.perf_counter() - start), records


def eval_metrics(model, tokenizer, rows: list[dict], max_new_tokens: int, seed: int = 0) -> dict:
    """Greedy eval of `rows` as `eval/<metric>` numbers, for the training loops' metrics lines (under
    torchrun the rows are shared out over the ranks, and every rank gets the numbers of all)."""
    metrics, _ = evaluate(model, tokenizer, rows, max_new_tokens=max_new_tokens, seed=seed, progress=False)
    return {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


def summarize(records: list[dict], n: int, seconds: float) -> dict:
    mean = lambda xs: sum(xs) / max(1, len(xs))
    accuracy = mean(per_problem_accuracy(records))
    low, high = wilson(accuracy, len(records))
    metrics = {
        "problems": len(records), "samples_per_problem": n,
        "accuracy": accuracy, "accuracy_ci95": [low, high],
        "format_rate": mean([x for r in records for x in r["format"]]),
        "reasoning_steps": mean([x for r in records for x in r["reasoning_steps"]]),
        "language_consistency": mean([x for r in records for x in r["language_consistency"]]),
        "mean_length": mean([x for r in records for x in r["lengths"]]),
        "truncated_frac": mean([float(x) for r in records for x in r["truncated"]]),
        "seconds": seconds,
    }
    for k in range(1, n + 1):
        metrics[f"pass@{k}"] = mean([pass_at_k(n, sum(a == 1.0 for a in r["accuracy"]), k) for r in records])
    return metrics
