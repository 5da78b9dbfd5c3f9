"""The pipeline's report (stage 8): every stage's model on one held-out set, and what each stage bought.

    held-out rows (GRPO's level, test split: never trained on)
      -> each model: `samples` completions per problem at the training temperature (and greedy, when
         asked), scored with the eval rewards                                   (evaluation/)
         each model's results saved in 8-eval/models/ as it finishes, reused when its weights and the
         settings are the same (a crash or a --resume redoes only what changed)
      -> per model: accuracy with its 95% interval, format rate, mean length
      -> per comparison, on the same problems (evaluation.paired): the mean per-problem difference,
         its 95% interval, problems gained / lost, the sign test
      -> per stage: wall-clock, tokens trained, curves; R1-Zero's rewards first vs last steps
      -> report.md and results.json (every number, and the per-problem accuracies)
"""
import json
import time
from pathlib import Path

from common.runlog import read_jsonl
from evaluation import evaluate, paired, per_problem_accuracy
from lm import load_model


def stage_comparisons(stages: dict) -> list[tuple[str, str, str]]:
    """(trained, measured against, why): each trained stage against the model it must beat. SFT 2
    starts from the GRPO model (the pipeline's default) or, as in the R1 paper, from the base model."""
    start, grpo = stages.get("6-sft2", {}).get("start"), stages.get("4-grpo2", {}).get("model")
    from_grpo = start is not None and start == grpo
    sft2 = ("SFT 2 (rejection-sampled data, from the GRPO model) vs SFT 1 (cold start)" if from_grpo else
            "SFT 2 (rejection-sampled data) vs SFT 1 (cold start), both from the base model")
    return [("1-r1-zero", "0-base", "R1-Zero: GRPO from the base model"),
            ("4-grpo2", "3-sft1", "GRPO, from SFT 1"),
            ("6-sft2", "3-sft1", sft2),
            ("6-sft2", "4-grpo2", "SFT 2 vs the GRPO model " + ("it started from, " if from_grpo else "")
             + "whose answers it learned"),
            ("7-logit-kd", "7-distill", "logit distillation (the teacher's distributions) vs sequence-level "
                                        "distillation (its answers alone): the same student, answers and steps")]


def beyond_noise(comparison: dict) -> bool:
    """A paired difference whose 95% interval leaves out 0."""
    low, high = comparison["diff_ci95"]
    return low > 0 or high < 0


def distillation_outcome(comparison: dict, logit: float, answers: float) -> str:
    """The report's sentence on stage 7's question, whichever way the paired comparison of logit
    distillation (`logit`) against SFT on the teacher's answers (`answers`) came out."""
    low, high = comparison["diff_ci95"]
    said = (f"logit distillation {logit:.3f} vs SFT on the answers {answers:.3f}, {comparison['diff']:+.3f} "
            f"(95% CI {low:+.3f} to {high:+.3f})")
    if not beyond_noise(comparison):
        verdict = "taught the student as much as its answers alone, within the noise"
    else:
        verdict = f"taught the student {'more' if low > 0 else 'less'} than its answers alone, beyond the noise"
    return (f"The teacher's distributions {verdict}: {said} (docs/distillation.md: the runs that made SFT on "
            "the answers the stage's method, and why the distributions, unfiltered where the answers are kept "
            "only when right, may teach less).")


def tokens_trained(folder: Path) -> int:
    """Tokens the stage trained on: SFT and distillation log them per step; GRPO logs the mean
    completion length and the completions per step (config)."""
    metrics = read_jsonl(folder / "metrics.jsonl")
    if any("completion_len" in m for m in metrics):
        config = json.loads((folder / "config.json").read_text())
        per_step = config["group_size"] * config["prompts_per_step"]
        return round(sum(m["completion_len"] * per_step * m.get("sampling_rounds", 1) for m in metrics))
    return sum(m.get("tokens", 0) for m in metrics if "loss" in m)


def first_and_last(folder: Path, keys: list[str]) -> dict:
    """Mean of each metric over the first and the last quarter of the steps."""
    metrics = [m for m in read_jsonl(folder / "metrics.jsonl") if "loss" in m]
    quarter = max(1, len(metrics) // 4)
    mean = lambda part, k: sum(m.get(k, 0.0) for m in part) / len(part)
    return {k: (mean(metrics[:quarter], k), mean(metrics[-quarter:], k)) for k in keys} | {"steps": len(metrics)}


def weights_stamp(path: str) -> list:
    """What identifies a model's weights without reading them: a built-in name as it is, a checkpoint
    folder by its files' names, sizes and modification times (a stage re-run rewrites them)."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    files = [(f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file()]
    return [path] + [[name, stat.st_size, stat.st_mtime_ns] for name, stat in files]


def evaluate_all(models: list[tuple[str, str]], rows: list[dict], runs: list[dict], tokens: int, seed: int,
                 cache: Path | None = None, progress=print) -> tuple[dict, dict]:
    """({model name: {run name: metrics with per-problem accuracies}}, {model name: seconds, loading
    included}). With `cache` (a folder), each model's results are written there as soon as it is done,
    with what they were measured on (weights, problems, runs, tokens, seed); a later call with the same
    reuses them, so an evaluation that dies (or a `--resume` after one stage is re-run) redoes only
    what changed."""
    results, seconds = {}, {}
    for name, path in models:
        key = {"weights": weights_stamp(path), "rows": [r["problem"] for r in rows], "runs": runs,
               "tokens": tokens, "seed": seed}
        saved = cache / f"{name}.json" if cache else None
        if saved and saved.exists():
            try:
                found = json.loads(saved.read_text())
            except json.JSONDecodeError:  # a write cut short: measure again
                found = {}
            if found.get("key") == key:
                progress(f"eval: {name}: reused from {saved}")
                results[name], seconds[name] = found["results"], found["seconds"]
                continue
        start = time.perf_counter()
        model, tok = load_model(path)
        results[name] = {}
        for run in runs:
            metrics, records = evaluate(model, tok, rows, samples_per_problem=run["samples"],
                                        temperature=run["temperature"], max_new_tokens=tokens, seed=seed)
            results[name][run["name"]] = {**metrics, "per_problem": per_problem_accuracy(records)}
        seconds[name] = time.perf_counter() - start
        if saved:
            saved.parent.mkdir(parents=True, exist_ok=True)
            partial = saved.with_suffix(".part")
            partial.write_text(json.dumps({"key": key, "results": results[name], "seconds": seconds[name]}))
            partial.replace(saved)
        del model
    return results, seconds


def write_report(out: Path, folder: Path, models: list[tuple[str, str]], stages: dict, rows: list[dict],
                 runs: list[dict], tokens: int, seed: int, stage_seconds: float) -> dict:
    """Evaluate (each model's results kept in folder/models as it finishes), compare, and write
    out/report.md and folder/results.json; returns the results.
    `stages`: per model name, its stage's seconds, tokens (and R1-Zero's rewards, the student's layers,
    the cold-start counts); `stage_seconds`: stages 1-7 in all."""
    results, model_seconds = evaluate_all(models, rows, runs, tokens, seed, cache=folder / "models")
    eval_seconds = sum(model_seconds.values())  # a reused model's time is the one it took when measured
    main_run, level = runs[0]["name"], rows[0].get("level", "")
    lines = ["# R1 pipeline report", "",
             f"Held-out: {len(rows)} problems of the GRPO stage's distribution (arithmetic level {level}, test "
             f"split: no stage trained on them), {tokens} new tokens. "
             + "; ".join(f"**{r['name']}**: {r['samples']} sample(s) per problem at temperature {r['temperature']}"
                         for r in runs) + ".", "",
             "## Every stage's model", "",
             "| stage | " + " | ".join(f"accuracy, {r['name']} (95% CI)" for r in runs)
             + " | format rate | mean length | stage time | tokens trained |",
             "|---|" + "---|" * (len(runs) + 4)]
    for name, _ in models:
        m, stage = results[name], stages.get(name, {})
        accuracy = " | ".join(f"{m[r['name']]['accuracy']:.3f} ({m[r['name']]['accuracy_ci95'][0]:.3f}-"
                              f"{m[r['name']]['accuracy_ci95'][1]:.3f})" for r in runs)
        seconds = f"{stage['seconds'] / 60:.1f} min" if "seconds" in stage else "-"
        lines.append(f"| {name} | {accuracy} | {m[main_run]['format_rate']:.3f} | {m[main_run]['mean_length']:.0f} | "
                     f"{seconds} | {stage.get('tokens', 0):,} |")
    lines += ["", "## What each stage bought (paired on the same problems)", "",
              "Difference in per-problem accuracy (trained minus baseline), its 95% interval, problems gained / "
              "lost, and the two-sided sign test on those.", "",
              "| comparison | " + " | ".join(f"{r['name']}: difference (95% CI) | gained / lost | p"
                                           for r in runs) + " |", "|---|" + "---|---|---|" * len(runs)]
    comparisons = {}
    for trained, baseline, what in stage_comparisons(stages):
        cells = []
        for r in runs:
            c = paired(results[baseline][r["name"]]["per_problem"], results[trained][r["name"]]["per_problem"])
            comparisons[f"{trained} vs {baseline}, {r['name']}"] = c
            beyond = " **beyond the noise**" if beyond_noise(c) else ""
            cells.append(f"{c['diff']:+.3f} ({c['diff_ci95'][0]:+.3f} to {c['diff_ci95'][1]:+.3f}){beyond} | "
                         f"{c['gained']} / {c['lost']} | {c['p_sign_test']:.3g}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    teacher, student = results["6-sft2"][main_run]["accuracy"], results["7-distill"][main_run]["accuracy"]
    distilled = stages.get("7-distill", {})
    layers, share = distilled.get("layers", []), f"{student / teacher if teacher else 0:.0%}"
    who = (f"The student keeps {len(layers)} of the teacher's layers ({layers})" if layers else
           f"The student is the base model ({distilled.get('student', '?')}), the teacher's own size: this stage is "
           "not compression but what the teacher's answers teach a model that never saw the recipe")
    lines += ["", f"{who}; trained by SFT on the teacher's answers to {distilled.get('kept', '?')} of "
                  f"{distilled.get('prompts', '?')} new prompts (the best right and well-formatted of 2 at T=1), "
                  f"it reaches {share} of the teacher's accuracy ({student:.3f} of {teacher:.3f}, {main_run})."]
    if "7-logit-kd" in results:
        lines += ["", distillation_outcome(comparisons[f"7-logit-kd vs 7-distill, {main_run}"],
                                           results["7-logit-kd"][main_run]["accuracy"], student)]
    if "kept" in stages.get("5-rejection", {}):
        lines += ["", f"Rejection sampling kept the best answer of {stages['5-rejection']['kept']} of "
                      f"{stages['5-rejection'].get('prompts', '?')} GRPO prompts (4 samples each at T=1; kept: right "
                      "and well formatted); SFT 2 trained on those plus as many cold-start rows, starting from "
                      f"{stages.get('6-sft2', {}).get('start', 'the base model')}."]
    zero = dict(stages.get("1-r1-zero", {}).get("rewards", {}))
    if zero:
        lines += ["", "## R1-Zero", "", f"{zero.pop('steps')} GRPO steps from the base model; each reward's mean over "
                  "the first and the last quarter of the steps (the curves: 1-r1-zero/training_curves.png):", "",
                  "| reward | first quarter | last quarter |", "|---|---|---|"]
        lines += [f"| {k} | {a:.3f} | {b:.3f} |" for k, (a, b) in zero.items()]
    lines += ["", f"Wall-clock: stages 1-7 {stage_seconds / 60:.1f} min, this evaluation {eval_seconds / 60:.1f} min, "
                  f"{(stage_seconds + eval_seconds) / 60:.1f} min in all.", "", "Training curves:", ""]
    lines += [f"- {name}: ![{name}]({name}/training_curves.png)" for name in stages
              if (out / name / "training_curves.png").exists()]
    counts = stages.get("2-cold-start", {}).get("counts")
    if counts:
        lines += ["", "Cold-start data kept and dropped, by method:", "", "```", json.dumps(counts, indent=1), "```"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (folder / "results.json").write_text(json.dumps({"models": results, "comparisons": comparisons,
                                                     "eval_seconds": eval_seconds,
                                                     "model_seconds": model_seconds}))
    return {name: {r: {k: v for k, v in m.items() if k != "per_problem"} for r, m in runs_.items()}
            for name, runs_ in results.items()}
