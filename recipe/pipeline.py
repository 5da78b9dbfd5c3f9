"""`python run.py pipeline`: the R1 recipe's stages in order, each stage's output feeding the next.

    1 r1-zero      GRPO from the base model with the tutorial's five rewards plus the tag count
    2 cold-start   cold-start data: built-in worked solutions, direct and few-shot prompting of the
                   base model, and refinement of the R1-Zero model's raw outputs (all filtered)
    3 sft1         SFT stage 1 (packed) of the base model on the cold-start data
    4 grpo2        reasoning-oriented GRPO from the SFT model on level-3 problems, with the
                   language-consistency reward and dynamic sampling (groups without signal resampled)
    5 rejection    rejection sampling from the GRPO model on GRPO's prompts (best answer per prompt,
                   right and well formatted)
    6 sft2         SFT stage 2 on the kept answers plus as many cold-start rows, from the GRPO model
                   (rejection-sampling fine-tuning; `--sft2-from base` starts it from the base model, as
                   the R1 paper does)
    7 distill      distillation of the stage-6 model, as the R1 paper distilled: the teacher answers new
                   training prompts (the best right and well-formatted of 2 at T=1 kept), and the student
                   (the base model; `--distill-student greedy:20` cuts one from the teacher) is trained by
                   SFT on those answers (sequence-level distillation, the stage's model); the same student
                   trained on the same answers for the same steps by logit distillation (the teacher's
                   distributions, forward KL at T=1) is its comparison (7-logit-kd): on this CPU the
                   teacher's distributions never beat its answers alone (docs/distillation.md)
    8 eval         every stage's model on the same held-out level-3 problems, sampled at the training
                   temperature, each trained stage compared, paired, with the model it must beat
                   -> report.md (recipe/report.py)

Every stage writes into its own folder under --output-dir and a `stage.json` when it finishes;
`--resume` skips the stages that have one. A failing stage stops the pipeline with its name.
`--quick` runs every stage for a couple of steps (what the test calls). The default sizes fit in 90
minutes on a 2-core CPU, evaluation included (82.5 measured with the earlier stage 7, docs/pipeline-example;
the present one, the teacher's answers plus a 30-layer student for 60 steps twice, is estimated at 85-90).
"""
import json
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import arg
from distill.train import DistillConfig
from distill.train import main as distill_main
from grpo.config import GRPOConfig
from grpo.train import main as grpo_main
from lm import checkpoint as ckpt
from lm import load_model
from recipe.coldstart import make_cold_start, write_pairs
from recipe.report import first_and_last, tokens_trained, write_report
from recipe.sample import SampleConfig
from recipe.sample import main as sample_main
from rewards import TUTORIAL_REWARDS
from sft.train import SFTConfig
from sft.train import main as sft_main
from tasks import arithmetic_rows, load_math

# R1-Zero's rewards: the tutorial's five, plus the tag count's partial credit (a quarter per tag)
ZERO_REWARDS = TUTORIAL_REWARDS + ["tag_count"]


@dataclass
class PipelineConfig:
    model: str = arg("smollm2-135m", "the base model: R1-Zero and SFT 1 start from it (and SFT 2, --sft2-from base)")
    output_dir: str = arg("runs/pipeline", "one folder per stage below this, and report.md")
    quick: bool = arg(False, "a couple of steps per stage: checks the plumbing in minutes")
    resume: bool = arg(False, "skip the stages whose stage.json exists")
    rejection_min_score: float = arg(2.0, "lowest accuracy + format score a rejection-sampled answer may have")
    distill_student: str = arg("base", "stage 7's student: base (the base model: the teacher's size, not compression) "
                                       "or teacher layers to keep (greedy:20, a count, or a list)")
    sft2_from: str = arg("grpo", "where SFT 2 starts: grpo (the model whose answers it learns, lr 2e-5) or base "
                                 "(the R1 paper's choice, lr 1e-4 as SFT 1)")
    eval_problems: int = arg(300, "held-out problems (GRPO's level, test split) for the final table")
    eval_samples: int = arg(2, "completions per held-out problem, at the training temperature")
    greedy_column: bool = arg(False, "also evaluate every model greedily (one more column; adds ~40% to the eval)")
    seed: int = arg(0, "seed for every stage")

    def __post_init__(self):
        if self.sft2_from not in ("grpo", "base"):
            raise ValueError(f"--sft2-from {self.sft2_from!r}: choose grpo or base")


def sizes(quick: bool) -> dict:
    if quick:
        return dict(zero_minutes=0, zero_steps=1, zero_tokens=24, worked=12, prompted=2, sft_steps=2, sft2_steps=2,
                    grpo_steps=1, grpo_minutes=0, group=4, prompts=2, rejection_prompts=4, distill_prompts=4,
                    distill_steps=2, eval_problems=4, tokens=24, max_length=1400, accumulation=1)
    # minutes bound the sampling stages (steps are an upper bound); SFT 1 is the 80-step cold start of
    # `make demo`, the length at which GRPO finds signal at level 3 (docs/results.md). SFT 2, from the GRPO model,
    # takes half that (vs SFT 1: +0.092 at 40 steps, session 11; +0.128 at 80, session 10), and
    # distillation: the teacher's answers to 400 new prompts (about a third kept), 60 steps a student, the
    # budget at which SFT on a cold-start teacher's 141 kept answers reached the teacher (docs/distillation.md);
    # 300 held-out problems narrow the paired intervals (docs/pipeline-example)
    return dict(zero_minutes=4, zero_steps=100, zero_tokens=96, worked=1000, prompted=16, sft_steps=80, sft2_steps=40,
                grpo_steps=500, grpo_minutes=12, group=8, prompts=8, rejection_prompts=300, distill_prompts=400,
                distill_steps=60, eval_problems=None, tokens=128, max_length=512, accumulation=4)


def main(config: PipelineConfig) -> dict:
    out, n = Path(config.output_dir), sizes(config.quick)
    common = dict(seed=config.seed)
    fresh = dict(overwrite=True)  # a stage re-run after --resume starts its own folder afresh
    grpo_common = dict(group_size=n["group"], prompts_per_step=n["prompts"], max_completion_length=n["tokens"],
                       temperature=1.0, eval_every=-1, learning_rate=2e-5, **common, **fresh)
    sft_common = dict(max_length=n["max_length"], gradient_accumulation_steps=n["accumulation"], learning_rate=1e-4,
                      warmup_ratio=0.1, eval_every=-1, **common, **fresh)

    def stage_json(stage: str) -> dict:
        return json.loads((out / stage / "stage.json").read_text())

    def r1_zero(folder):
        grpo_main(GRPOConfig(model=config.model, dataset="arithmetic:1-2", reward_funcs=",".join(ZERO_REWARDS),
                             max_steps=n["zero_steps"], max_minutes=n["zero_minutes"], save_every=n["zero_steps"],
                             output_dir=str(folder), **{**grpo_common, "max_completion_length": n["zero_tokens"]}))
        rewards = first_and_last(folder, [f"reward/{name}" for name in ZERO_REWARDS])
        return {"model": str(ckpt.latest_checkpoint(folder)), "tokens": tokens_trained(folder), "rewards": rewards}

    def cold_start(folder):
        rows = arithmetic_rows("train", n["worked"], seed=config.seed)
        prompted = rows[:n["prompted"]]
        base, tok = load_model(config.model)
        zero, _ = load_model(stage_json("1-r1-zero")["model"])
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

    def sft(folder, dataset, start=config.model, steps=n["sft_steps"], **kw):
        sft_main(SFTConfig(model=start, dataset=dataset, train_examples=100_000, max_steps=steps,
                           save_every=steps, output_dir=str(folder), **{**sft_common, **kw}))
        return {"model": str(ckpt.latest_checkpoint(folder)), "tokens": tokens_trained(folder), "start": start}

    def sft2(folder):
        # from the GRPO model, SFT 2 is rejection-sampling fine-tuning of the model on its own best answers
        # (session 10, on session 9's stages 1-5: 0.415 vs SFT 1 0.287 and GRPO 0.330, where SFT 2 from
        # the base model got 0.275); its answers already have low loss there, so GRPO's gentle rate
        data = stage_json("5-rejection")["data"]
        if config.sft2_from == "grpo":
            return sft(folder, data, start=stage_json("4-grpo2")["model"], steps=n["sft2_steps"],
                       learning_rate=grpo_common["learning_rate"])
        return sft(folder, data)  # from the base model, SFT 1's length

    def grpo2(folder):  # level 3: the SFT model is right about a quarter of the time there, at level 4 seldom
        grpo_main(GRPOConfig(model=stage_json("3-sft1")["model"], dataset="arithmetic:3",
                             reward_funcs="accuracy,format,language_consistency", reward_weights="1,0.5,0.5",
                             max_steps=n["grpo_steps"], max_minutes=n["grpo_minutes"], save_every=n["grpo_steps"],
                             dynamic_sampling=True, output_dir=str(folder), **grpo_common))
        return {"model": str(ckpt.latest_checkpoint(folder)), "tokens": tokens_trained(folder)}

    def rejection(folder):  # GRPO's own prompts (train split), its temperature; the best right answer of 4
        summary = sample_main(SampleConfig(model=stage_json("4-grpo2")["model"], dataset="arithmetic:3",
                                           num_prompts=n["rejection_prompts"], num_samples=4, temperature=1.0,
                                           keep="best", min_score=config.rejection_min_score,
                                           max_new_tokens=n["tokens"], batch_size=50, output_dir=str(folder),
                                           **common))
        if summary["kept"] == 0:
            raise RuntimeError(f"no answer scored >= {config.rejection_min_score}; lower --rejection-min-score")
        # R1's SFT 2 data is mostly rejection-sampled reasoning; here the kept answers and as many cold-start rows
        kept = (folder / "kept.jsonl").read_text().splitlines()
        cold = (out / "2-cold-start" / "cold_start.jsonl").read_text().splitlines()
        (folder / "sft2_data.jsonl").write_text("".join(line + "\n" for line in kept + cold[:len(kept)]))
        return {"model": stage_json("4-grpo2")["model"], "data": str(folder / "sft2_data.jsonl"),
                "kept": summary["kept"], "prompts": summary["prompts"]}

    def distill(folder):  # the teacher's answers, then the student by SFT on them and by logit distillation
        teacher = stage_json("6-sft2")["model"]
        answers = folder / "teacher-answers"
        summary = sample_main(SampleConfig(model=teacher, dataset="arithmetic:3", num_prompts=n["distill_prompts"],
                                           num_samples=2, temperature=1.0, keep="best",
                                           min_score=config.rejection_min_score, max_new_tokens=n["tokens"],
                                           batch_size=50, output_dir=str(answers), seed=config.seed + 1))
        if summary["kept"] == 0:  # other prompts than stage 5's (seed + 1), none of the held-out ones
            raise RuntimeError(f"the teacher answered none of {summary['prompts']} prompts with a score >= "
                               f"{config.rejection_min_score}; lower --rejection-min-score")
        base = config.distill_student == "base"

        def run(run_folder, layers, **loss):  # the same student, rows and steps for both
            start = time.perf_counter()
            distill_main(DistillConfig(teacher=teacher, dataset=str(answers / "kept.jsonl"),
                                       student=config.model if base else "",
                                       student_from_teacher_layers="" if base else layers,
                                       max_steps=n["distill_steps"], save_every=n["distill_steps"],
                                       eval_every=-1, lr_scheduler="constant", warmup_ratio=0.02,
                                       max_length=n["max_length"], gradient_accumulation_steps=n["accumulation"],
                                       output_dir=str(run_folder), **loss, **common, **fresh))
            return {"model": str(ckpt.latest_checkpoint(run_folder)), "tokens": tokens_trained(run_folder),
                    "seconds": time.perf_counter() - start}

        student = run(folder, config.distill_student, alpha=0.0)   # sequence-level: the answers alone
        layers = [] if base else json.loads((folder / "student.json").read_text())["layers"]
        # the same student by the teacher's distributions (its layers as a list: "3," one layer, "3" a count)
        logit = run(out / "7-logit-kd", "".join(f"{i}," for i in layers), alpha=1.0, temperature=1.0)
        return {"model": student["model"], "tokens": student["tokens"], "student_seconds": student["seconds"],
                "student": config.model if base else "teacher layers", "layers": layers, "kept": summary["kept"],
                "prompts": summary["prompts"], "logit_kd": logit}

    def evaluation(folder):
        rows = load_math("arithmetic:3", "test", n["eval_problems"] or config.eval_problems, seed=config.seed)
        done = {name: stage_json(name) for name in STAGE_NAMES[:-1]}
        # the table's rows: the student by sequence-level distillation (the stage's model) and by logit distillation
        stages = {**done, "7-distill": {**done["7-distill"], "seconds": done["7-distill"]["student_seconds"]},
                  "7-logit-kd": done["7-distill"]["logit_kd"]}
        models = [("0-base", config.model)] + [(name, stages[name]["model"]) for name in
                                               ("1-r1-zero", "3-sft1", "4-grpo2", "6-sft2", "7-distill", "7-logit-kd")]
        runs = [{"name": "T=1", "samples": config.eval_samples if not config.quick else 1, "temperature": 1.0}]
        if config.greedy_column:
            runs.append({"name": "greedy", "samples": 1, "temperature": 0.0})
        return {"model": "", "results": write_report(out, folder, models, stages, rows, runs, n["tokens"], config.seed,
                                                     sum(s["seconds"] for s in done.values()))}

    stages = [("1-r1-zero", r1_zero), ("2-cold-start", cold_start),
              ("3-sft1", lambda f: sft(f, stage_json("2-cold-start")["data"])), ("4-grpo2", grpo2),
              ("5-rejection", rejection), ("6-sft2", sft2),
              ("7-distill", distill), ("8-eval", evaluation)]
    STAGE_NAMES = [name for name, _ in stages]

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
    return stage_json("8-eval")
