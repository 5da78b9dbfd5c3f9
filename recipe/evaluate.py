"""`python run.py eval --model PATH --dataset NAME`: score models on a held-out split with the rewards.

For each problem, `samples_per_problem` completions are sampled (greedy when temperature is 0) and
scored (evaluation/). The report gives, per model: accuracy with a 95% Wilson interval over problems,
format rate, reasoning-steps score, language consistency, mean completion length in tokens, the share
truncated at the budget, and pass@k for k = 1..samples_per_problem (the unbiased estimator of
Chen et al. 2021: 1 - C(n - c, k) / C(n, k) per problem, averaged). It writes `report.json` and
`samples.jsonl` to the output folder and prints a table; `--model a,b,c` compares several models,
and each model after the first is also compared with the first on the same problems (`paired`): the
mean per-problem difference in accuracy with a 95% interval, problems gained and lost, and the
two-sided sign test on those (McNemar's exact test when each problem has one greedy answer).
Under `torchrun` the problems are shared out over the ranks; rank 0 writes the report.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from common import dist
from common.config import arg
from common.runlog import append_jsonl
from evaluation import evaluate, paired, per_problem_accuracy
from lm import load_model
from rewards.verify import ANSWER_FORMATS
from tasks import load_math


@dataclass
class EvalConfig:
    model: str = arg("smollm2-135m", "model(s) to score: a name, folder or hub id; comma-separated to compare")
    dataset: str = arg("arithmetic", "math dataset: arithmetic[:levels], a local file, or a hub id")
    split: str = arg("test", "split to score (the built-in task's test split never meets its train split; a local "
                             "file without splits: test is a fixed tenth its train split never holds, all every row)")
    num_problems: int = arg(200, "how many problems")
    samples_per_problem: int = arg(1, "completions per problem (pass@k up to this k)")
    temperature: float = arg(0.0, "0 is greedy")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    max_new_tokens: int = arg(256, "token budget per completion")
    batch_size: int = arg(32, "prompts per sampling batch")
    answer_format: str = arg("r1", "where the answer is read: r1 (the <answer> tag, else the last \\boxed{}), boxed "
                             "(the last \\boxed{}), or auto (tag, else boxed, else a final 'the answer is N'): "
                             "for models not trained on the tags")
    output_dir: str = arg("runs/eval", "where report.json and samples.jsonl go")
    seed: int = arg(0, "seed for the dataset and sampling")
    dtype: str = arg("auto", "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    device: str = arg("auto", "auto, cpu, cuda")

    def __post_init__(self):
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"--answer-format {self.answer_format!r}: choose one of {', '.join(ANSWER_FORMATS)}")


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
    device = dist.init(config.device)  # several processes under torchrun; one otherwise
    rows = load_math(config.dataset, config.split, config.num_problems, seed=config.seed)
    out = Path(config.output_dir)
    main_rank = dist.is_main()
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples.jsonl").unlink(missing_ok=True)
    results, first_accuracy = {}, None
    for name in [m.strip() for m in config.model.split(",") if m.strip()]:
        model, tokenizer = load_model(name, dtype=config.dtype, device=device)
        metrics, records = evaluate(model, tokenizer, rows, samples_per_problem=config.samples_per_problem,
                                    temperature=config.temperature, top_p=config.top_p,
                                    max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                    seed=config.seed, answer_format=config.answer_format)
        results[name] = metrics
        if first_accuracy is None:
            first_accuracy = per_problem_accuracy(records)
        elif len(records) > 1:
            metrics["paired"] = paired(first_accuracy, per_problem_accuracy(records))
        if main_rank:
            for record in records:
                append_jsonl(out / "samples.jsonl", {"model": name, **record})
        del model
    report = {"dataset": config.dataset, "split": config.split, "num_problems": len(rows),
              "samples_per_problem": config.samples_per_problem, "models": results}
    if main_rank:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(format_table(results))
        print(f"report: {out / 'report.json'}")
    return report
