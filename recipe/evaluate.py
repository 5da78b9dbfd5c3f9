"""`python run.py eval --model PATH --dataset NAME`: score models on a held-out split with the rewards.

For each problem, `samples_per_problem` completions are sampled (greedy when temperature is 0) and
scored. The report gives, per model: accuracy with a 95% Wilson interval over problems, format
rate, reasoning-steps score, language consistency, mean completion length in tokens, the share
truncated at the budget, and pass@k for k = 1..samples_per_problem (the unbiased estimator of
Chen et al. 2021: 1 - C(n - c, k) / C(n, k) per problem, averaged). It writes `report.json` and
`samples.jsonl` to the output folder and prints a table; `--model a,b,c` compares several models,
and each model after the first is also compared with the first on the same problems (`paired`): the
mean per-problem difference in accuracy with a 95% interval, problems gained and lost, and the
two-sided sign test on those (McNemar's exact test when each problem has one greedy answer).
"""
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from common import dist
from common.config import arg
from common.runlog import append_jsonl
from lm import load_model, sample, sharding
from lm.chat import encode_prompt
from rewards import build_rewards, score
from tasks import load_math

EVAL_REWARDS = ["accuracy", "format", "reasoning_steps", "language_consistency"]


@dataclass
class EvalConfig:
    model: str = arg("smollm2-135m", "model(s) to score: a name, folder or hub id; comma-separated to compare")
    dataset: str = arg("arithmetic", "math dataset: arithmetic[:levels], a local file, or a hub id")
    split: str = arg("test", "split to score (the built-in task's test split never meets its train split)")
    num_problems: int = arg(200, "how many problems")
    samples_per_problem: int = arg(1, "completions per problem (pass@k up to this k)")
    temperature: float = arg(0.0, "0 is greedy")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    max_new_tokens: int = arg(256, "token budget per completion")
    batch_size: int = arg(32, "prompts per sampling batch")
    output_dir: str = arg("runs/eval", "where report.json and samples.jsonl go")
    seed: int = arg(0, "seed for the dataset and sampling")
    dtype: str = arg("auto", "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    device: str = arg("auto", "auto, cpu, cuda")


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


def generate_and_score(model, tokenizer, rows: list[dict], specs, *, samples_per_problem: int = 1,
                       temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256,
                       batch_size: int = 32, seed: int = 0, progress: bool = True, desc: str = "sample") -> list[dict]:
    """One record per row: its completions, their lengths, truncation, each reward and the weighted score.
    Prompts are batched by length (less padding); records come back in the rows' order."""
    n = samples_per_problem
    generator = torch.Generator(device=model.device).manual_seed(seed)
    prompts = [encode_prompt(tokenizer, row["problem"]) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))
    records = [None] * len(rows)
    was_training = model.training
    model.eval()
    policy = sharding.gathered(model)  # under --fsdp a full copy, gathered once for every batch
    for b in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        idx = order[b:b + batch_size]
        out = sample(policy, [prompts[i] for i in idx], group_size=n, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, generator=generator,
                     cuda_graphs=None if policy is model else False)  # a copy used once captures no graphs
        lengths = out.completion_mask.sum(-1).tolist()
        texts = [tokenizer.decode(ids[:length], skip_special_tokens=True)
                 for ids, length in zip(out.completion_ids.tolist(), lengths)]
        columns = {k: [rows[i][k] for i in idx for _ in range(n)] for k in ("problem", "solution")}
        per_reward, total = score(specs, texts, columns)
        for j, i in enumerate(idx):
            s = slice(j * n, (j + 1) * n)
            records[i] = {"problem": rows[i]["problem"], "solution": rows[i]["solution"],
                          "completions": texts[s], "lengths": lengths[s], "truncated": out.truncated[s].tolist(),
                          **{name: values[s] for name, values in per_reward.items()}, "score": total[s]}
    model.train(was_training)
    return records


def evaluate(model, tokenizer, rows: list[dict], *, samples_per_problem: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 32, seed: int = 0,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, sample records) for one model on `rows` (each with `problem` and `solution`)."""
    start = time.perf_counter()
    records = generate_and_score(model, tokenizer, rows, build_rewards(EVAL_REWARDS),
                                 samples_per_problem=samples_per_problem, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                 progress=progress, desc="eval")
    return summarize(records, samples_per_problem, time.perf_counter() - start), records


def eval_metrics(model, tokenizer, rows: list[dict], max_new_tokens: int, seed: int = 0) -> dict:
    """Greedy eval of `rows` as `eval/<metric>` numbers, for the training loops' metrics lines. Under
    torchrun each rank evaluates every world-th row and the numbers are averaged over the ranks."""
    mine = rows[dist.rank()::dist.world()]
    metrics, _ = evaluate(model, tokenizer, mine, max_new_tokens=max_new_tokens, seed=seed, progress=False)
    numbers = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
    return dist.mean_over_ranks(numbers, weight=len(mine))


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


def per_problem_accuracy(records: list[dict]) -> list[float]:
    return [sum(a == 1.0 for a in r["accuracy"]) / len(r["accuracy"]) for r in records]


def format_table(results: dict[str, dict]) -> str:
    head = f"{'model':<40} {'accuracy (95% CI)':<22} {'format':>7} {'steps':>6} {'lang':>6} {'length':>7}"
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        lo, hi = m["accuracy_ci95"]
        lines.append(f"{name[-40:]:<40} {m['accuracy']:.3f} ({lo:.3f}-{hi:.3f})    {m['format_rate']:7.3f} "
                     f"{m['reasoning_steps']:6.2f} {m['language_consistency']:6.2f} {m['mean_length']:7.1f}")
    first = next(iter(results), None)
    for name, m in results.items():
        if "paired" in m:
            c = m["paired"]
            lines.append(f"{name[-40:]} vs {first[-40:]}: accuracy {c['diff']:+.3f} (95% CI {c['diff_ci95'][0]:+.3f} "
                         f"to {c['diff_ci95'][1]:+.3f}), {c['gained']} problems gained, {c['lost']} lost, "
                         f"sign test p = {c['p_sign_test']:.3g}")
    return "\n".join(lines)


def main(config: EvalConfig) -> dict:
    rows = load_math(config.dataset, config.split, config.num_problems, seed=config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").unlink(missing_ok=True)
    results, first_accuracy = {}, None
    for name in [m.strip() for m in config.model.split(",") if m.strip()]:
        model, tokenizer = load_model(name, dtype=config.dtype, device=config.device)
        metrics, records = evaluate(model, tokenizer, rows, samples_per_problem=config.samples_per_problem,
                                    temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                    seed=config.seed)
        results[name] = metrics
        if first_accuracy is None:
            first_accuracy = per_problem_accuracy(records)
        elif len(records) > 1:
            metrics["paired"] = paired(first_accuracy, per_problem_accuracy(records))
        for record in records:
            append_jsonl(out / "samples.jsonl", {"model": name, **record})
        del model
    report = {"dataset": config.dataset, "split": config.split, "models": results}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(results))
    print(f"report: {out / 'report.json'}")
    return report
