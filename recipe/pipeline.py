"""`python run.py pipeline`: the R1 recipe's stages in order, each stage's output feeding the next.

    1 r1-zero      GRPO from the base model with the tutorial's five rewards
    2 cold-start   cold-start data: built-in worked solutions, direct and few-shot prompting of the
                   base model, and refinement of the R1-Zero model's raw outputs (all filtered)
    3 sft1         SFT stage 1 (packed) of the base model on the cold-start data
    4 grpo2        reasoning-oriented GRPO from the SFT model, with the language-consistency reward
    5 rejection    rejection sampling from the GRPO model (best answer per prompt, score >= threshold)
    6 sft2         SFT stage 2 of the base model on the kept answers plus the cold-start data
    7 distill      distillation of the stage-6 model into a student with half its layers
    8 eval         every stage's model on the same held-out set -> report.md with a table and plots

Every stage writes into its own folder under --output-dir and a `stage.json` when it finishes;
`--resume` skips the stages that have one. A failing stage stops the pipeline with its name.
`--quick` runs every stage for a couple of steps (what the test calls).
"""
import json
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import arg
from distill.train import DistillConfig
from distill.train import main as distill_main
from evaluation import evaluate
from grpo.config import GRPOConfig
from grpo.train import main as grpo_main
from lm import checkpoint as ckpt
from lm import load_model
from recipe.coldstart import make_cold_start, write_pairs
from recipe.sample import SampleConfig
from recipe.sample import main as sample_main
from rewards import TUTORIAL_REWARDS
from sft.train import SFTConfig
from sft.train import main as sft_main
from tasks import arithmetic_rows, load_math


@dataclass
class PipelineConfig:
    model: str = arg("smollm2-135m", "the base model every stage starts from")
    output_dir: str = arg("runs/pipeline", "one folder per stage below this, and report.md")
    quick: bool = arg(False, "a couple of steps per stage: checks the plumbing in minutes")
    resume: bool = arg(False, "skip the stages whose stage.json exists")
    rejection_min_score: float = arg(2.0, "lowest accuracy + format score a rejection-sampled answer may have")
    eval_problems: int = arg(100, "held-out problems (arithmetic levels 1-4) for the final table")
    seed: int = arg(0, "seed for every stage")


TRAINED_STAGES = ("1-r1-zero", "3-sft1", "4-grpo2", "6-sft2", "7-distill")  # each leaves a model and curves


def sizes(quick: bool) -> dict:
    if quick:
        return dict(zero_steps=1, zero_tokens=24, worked=12, prompted=2, sft_steps=2, grpo_steps=1, rejection_prompts=4,
                    distill_steps=2, eval_problems=4, tokens=24)
    # R1-Zero gets a short budget: the base model never closes its tags, so every sample runs to it
    return dict(zero_steps=4, zero_tokens=96, worked=600, prompted=16, sft_steps=20, grpo_steps=8, rejection_prompts=48,
                distill_steps=20, eval_problems=None, tokens=160)


def main(config: PipelineConfig) -> dict:
    out, n = Path(config.output_dir), sizes(config.quick)
    common = dict(seed=config.seed)
    fresh = dict(overwrite=True)  # a stage re-run after --resume starts its own folder afresh
    grpo_common = dict(group_size=4 if config.quick else 8, prompts_per_step=2, max_completion_length=n["tokens"],
                       eval_every=-1, learning_rate=1e-5, **common, **fresh)
    sft_common = dict(max_length=512 if not config.quick else 1400, gradient_accumulation_steps=4 if not config.quick else 1,
                      learning_rate=1e-4, warmup_ratio=0.1, eval_every=-1, **common, **fresh)

    def model_of(stage: str) -> str:
        return json.loads((out / stage / "stage.json").read_text())["model"]

    def r1_zero(folder):
        grpo_main(GRPOConfig(model=config.model, dataset="arithmetic:1-2", reward_funcs=",".join(TUTORIAL_REWARDS),
                             max_steps=n["zero_steps"], save_every=n["zero_steps"], output_dir=str(folder),
                             **{**grpo_common, "max_completion_length": n["zero_tokens"]}))
        return {"model": str(ckpt.latest_checkpoint(folder))}

    def cold_start(folder):
        rows = arithmetic_rows("train", n["worked"], seed=config.seed)
        prompted = rows[:n["prompted"]]
        base, tok = load_model(config.model)
        zero, _ = load_model(model_of("1-r1-zero"))
        from evaluation import generate_and_score
        from rewards import build_rewards
        raw = generate_and_score(zero, tok, prompted, build_rewards("format"), samples_per_problem=2,
                                 temperature=0.8, max_new_tokens=n["tokens"], seed=config.seed, desc="refine")
        counts, pairs = {}, []
        for method, kw in (("worked", {}), ("direct", {"model": base, "tokenizer": tok}),
                           ("few_shot", {"model": base, "tokenizer": tok}), ("refine", {"raw_outputs": raw})):
            got, why = make_cold_start(method, rows if method == "worked" else prompted,
                                       max_new_tokens=n["tokens"], seed=config.seed, **kw)
            pairs += got
            counts[method] = dict(why)
            print(f"cold start, {method}: {dict(why)}")
        write_pairs(folder / "cold_start.jsonl", pairs)
        (folder / "counts.json").write_text(json.dumps(counts, indent=2))
        return {"model": config.model, "data": str(folder / "cold_start.jsonl"), "counts": counts}

    def sft(folder, dataset, steps_key="sft_steps"):
        sft_main(SFTConfig(model=config.model, dataset=dataset, train_examples=100_000, max_steps=n[steps_key],
                           save_every=n[steps_key], output_dir=str(folder), **sft_common))
        return {"model": str(ckpt.latest_checkpoint(folder))}

    def grpo2(folder):  # level 3: the SFT model is right about a third of the time there, at level 4 never
        grpo_main(GRPOConfig(model=model_of("3-sft1"), dataset="arithmetic:3",
                             reward_funcs="accuracy,format,language_consistency", max_steps=n["grpo_steps"],
                             save_every=n["grpo_steps"], output_dir=str(folder), **grpo_common))
        return {"model": str(ckpt.latest_checkpoint(folder))}

    def rejection(folder):
        summary = sample_main(SampleConfig(model=model_of("4-grpo2"), dataset="arithmetic:1-4",
                                           num_prompts=n["rejection_prompts"], num_samples=4, keep="best",
                                           min_score=config.rejection_min_score, max_new_tokens=n["tokens"],
                                           output_dir=str(folder), **common))
        if summary["kept"] == 0:
            raise RuntimeError(f"no answer scored >= {config.rejection_min_score}; lower --rejection-min-score")
        merged = (folder / "kept.jsonl").read_text() + (out / "2-cold-start" / "cold_start.jsonl").read_text()
        (folder / "sft2_data.jsonl").write_text(merged)
        return {"model": model_of("4-grpo2"), "data": str(folder / "sft2_data.jsonl"), "kept": summary["kept"]}

    def distill(folder):
        distill_main(DistillConfig(teacher=model_of("6-sft2"), dataset=json.loads(
            (out / "5-rejection" / "stage.json").read_text())["data"], max_steps=n["distill_steps"],
            save_every=n["distill_steps"], eval_every=-1, max_length=sft_common["max_length"], output_dir=str(folder),
            gradient_accumulation_steps=sft_common["gradient_accumulation_steps"], **common, **fresh))
        return {"model": str(ckpt.latest_checkpoint(folder))}

    def evaluation(folder):
        return {"model": "", "results": report(out, folder, config, n)}

    stages = [("1-r1-zero", r1_zero), ("2-cold-start", cold_start),
              ("3-sft1", lambda f: sft(f, model_data("2-cold-start"))), ("4-grpo2", grpo2),
              ("5-rejection", rejection), ("6-sft2", lambda f: sft(f, model_data("5-rejection"))),
              ("7-distill", distill), ("8-eval", evaluation)]

    def model_data(stage: str) -> str:
        return json.loads((out / stage / "stage.json").read_text())["data"]

    for name, run_stage in stages:
        folder = out / name
        if config.resume and (folder / "stage.json").exists():
            print(f"== {name}: done before, skipped")
            continue
        print(f"== stage {name}", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            result = run_stage(folder)
        except Exception as e:
            raise RuntimeError(f"pipeline stage {name} failed: {type(e).__name__}: {e}") from e
        result["seconds"] = time.perf_counter() - start
        (folder / "stage.json").write_text(json.dumps(result, indent=2))
    print(f"report: {out / 'report.md'}")
    return json.loads((out / "8-eval" / "stage.json").read_text())


def report(out: Path, folder: Path, config: PipelineConfig, n: dict) -> dict:
    """Evaluate every stage's model on one held-out set; write report.md."""
    start = time.perf_counter()
    rows = load_math("arithmetic:1-4", "test", n["eval_problems"] or config.eval_problems, seed=config.seed)
    models = [("0-base", config.model, 0.0)]
    for name in TRAINED_STAGES:
        stage = json.loads((out / name / "stage.json").read_text())
        models.append((name, stage["model"], stage["seconds"]))
    results, lines = {}, ["# R1 pipeline report", "",
                          f"Held-out: {len(rows)} arithmetic problems (levels 1-4, test split), greedy, "
                          f"{n['tokens']} new tokens.", "",
                          "| stage | accuracy (95% CI) | format rate | reasoning steps | mean length | stage time |",
                          "|---|---|---|---|---|---|"]
    for name, model_name, seconds in models:
        model, tok = load_model(model_name)
        metrics, _ = evaluate(model, tok, rows, max_new_tokens=n["tokens"], seed=config.seed)
        results[name] = metrics
        lo, hi = metrics["accuracy_ci95"]
        lines.append(f"| {name} | {metrics['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | {metrics['format_rate']:.3f} | "
                     f"{metrics['reasoning_steps']:.2f} | {metrics['mean_length']:.0f} | {seconds / 60:.1f} min |")
    # every finished stage before this one (this one's stage.json is written after the report)
    stage_seconds = sum(json.loads(p.read_text())["seconds"] for p in out.glob("*/stage.json") if p.parent != folder)
    eval_seconds = time.perf_counter() - start
    lines += ["", f"Wall-clock: stages 1-7 {stage_seconds / 60:.1f} min, this evaluation {eval_seconds / 60:.1f} min, "
                  f"{(stage_seconds + eval_seconds) / 60:.1f} min in all."]
    lines += ["", "Training curves:", ""]
    for name in TRAINED_STAGES:
        if (out / name / "training_curves.png").exists():
            lines.append(f"- {name}: ![{name}]({name}/training_curves.png)")
    counts = json.loads((out / "2-cold-start" / "counts.json").read_text())
    lines += ["", "Cold-start data kept and dropped, by method:", "", "```", json.dumps(counts, indent=1), "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results
