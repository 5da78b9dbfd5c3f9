"""`python run.py sample`: N completions per prompt from any model, scored; rejection sampling.

Writes `samples.jsonl`: one line per prompt with every completion, each reward, the weighted score.
With `--keep best --min-score X` it also writes `kept.jsonl`: for each prompt, the best completion
scoring at least X, as a prompt/completion pair that `run.py sft` reads (R1's rejection sampling for
SFT stage 2; with a teacher model, it is sequence-level distillation as the R1 paper distilled its
small models). Prints how many prompts kept an answer. Under `torchrun` the prompts are shared out over the ranks
(the same completions as one process: each prompt's random numbers are keyed by its index).
"""
import json
from dataclasses import dataclass
from pathlib import Path

from common import dist
from common.config import arg
from evaluation import generate_and_score
from lm import load_model
from lm.chat import SYSTEM_PROMPT
from rewards import build_rewards
from tasks import load_math


@dataclass
class SampleConfig:
    model: str = arg("smollm2-135m", "model to sample from: built-in name, checkpoint folder or hub id")
    dataset: str = arg("arithmetic", "math prompts: arithmetic[:levels], a local file, or a hub id")
    split: str = arg("train", "split to sample prompts from")
    num_prompts: int = arg(100, "how many prompts")
    num_samples: int = arg(4, "completions per prompt")
    temperature: float = arg(0.8, "sampling temperature (0: greedy)")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    max_new_tokens: int = arg(256, "token budget per completion")
    batch_size: int = arg(16, "prompts per sampling batch")
    reward_funcs: str = arg("accuracy,format", "rewards that score each completion")
    reward_weights: str = arg("", "their weights (empty: all 1)")
    keep: str = arg("all", "all: keep nothing apart; best: write each prompt's best completion to kept.jsonl")
    min_score: float = arg(0.0, "with --keep best: the lowest weighted score a kept completion may have")
    output_dir: str = arg("runs/sample", "where samples.jsonl (and kept.jsonl) go")
    seed: int = arg(0, "seed for prompts and sampling")
    dtype: str = arg("auto", "auto (bfloat16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    device: str = arg("auto", "auto, cpu, cuda")

    def __post_init__(self):
        if self.keep not in ("all", "best"):
            raise ValueError(f"--keep {self.keep!r}: choose all or best")


def best_completions(records: list[dict], min_score: float) -> list[dict]:
    """Per record, the highest-scoring completion at or above min_score (ties: the shortest). An empty
    completion (the model's first token was EOS) is never kept: it is no answer to train on."""
    kept = []
    for r in records:
        ranked = sorted((i for i, c in enumerate(r["completions"]) if c.strip()),
                        key=lambda i: (-r["score"][i], r["lengths"][i]))
        if ranked and r["score"][ranked[0]] >= min_score:
            i = ranked[0]
            kept.append({"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                    {"role": "user", "content": r["problem"]}],
                         "completion": r["completions"][i], "problem": r["problem"],
                         "solution": r["solution"], "score": r["score"][i]})
    return kept


def main(config: SampleConfig) -> dict:
    device = dist.init(config.device)  # under torchrun the prompts are shared out over the ranks
    rows = load_math(config.dataset, config.split, config.num_prompts, seed=config.seed)
    specs = build_rewards(config.reward_funcs, config.reward_weights, config.max_new_tokens)
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=device)
    records = generate_and_score(model, tokenizer, rows, specs, samples_per_problem=config.num_samples,
                                 temperature=config.temperature, top_p=config.top_p,
                                 max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                 seed=config.seed)
    summary = {"prompts": len(records), "completions": sum(len(r["completions"]) for r in records)}
    if not dist.is_main():  # rank 0 writes
        return summary
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config.keep == "best":
        kept = best_completions(records, config.min_score)
        (out / "kept.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kept))
        summary["kept"] = len(kept)
        print(f"{len(kept)} of {len(records)} prompts kept an answer scoring >= {config.min_score} "
              f"-> {out / 'kept.jsonl'} (train on it with: python run.py sft --dataset {out / 'kept.jsonl'})")
    else:
        print(f"{summary['completions']} completions for {len(records)} prompts -> {out / 'samples.jsonl'}")
    return summary
