"""`run.py pipeline --quick` on the tiny model: every stage runs, feeds the next, --resume skips, a failure is named."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from recipe.coldstart import refine, verdict
from recipe.pipeline import PipelineConfig
from recipe.report import distillation_outcome, evaluate_all, stage_comparisons, weights_stamp
from tasks import load_math

STAGES = ["1-r1-zero", "2-cold-start", "3-sft1", "4-grpo2", "5-rejection", "6-sft2", "7-distill", "8-eval"]


def pipeline(out, *extra):
    return subprocess.run([sys.executable, "run.py", "pipeline", "--model", "tiny", "--quick",
                           "--rejection-min-score", "-10", "--output-dir", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_quick_pipeline_runs_every_stage_and_resumes(tmp_path):
    proc = pipeline(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in STAGES:
        assert (tmp_path / stage / "stage.json").exists(), stage
    report = (tmp_path / "report.md").read_text()
    for row in ("| 0-base |", "| 3-sft1 |", "| 7-distill |"):
        assert row in report
    counts = json.loads((tmp_path / "2-cold-start" / "counts.json").read_text())
    assert counts["worked"]["kept"] == 12          # the built-in worked solutions all pass the filters
    # stage 3 trained on stage 2's file; stage 7's teacher is stage 6's model
    assert json.loads((tmp_path / "3-sft1" / "config.json").read_text())["dataset"].endswith("cold_start.jsonl")
    assert json.loads((tmp_path / "7-distill" / "config.json").read_text())["teacher"].startswith(str(tmp_path / "6-sft2"))
    # the GRPO stage resamples groups without signal (DAPO's dynamic sampling), as docs/results.md's pipeline row says
    assert json.loads((tmp_path / "4-grpo2" / "config.json").read_text())["dynamic_sampling"] is True
    # SFT 2 starts from the GRPO model (rejection-sampling fine-tuning) at GRPO's gentle rate, on stage 5's data
    sft2 = json.loads((tmp_path / "6-sft2" / "config.json").read_text())
    grpo_model = json.loads((tmp_path / "4-grpo2" / "stage.json").read_text())["model"]
    assert sft2["model"] == grpo_model and sft2["learning_rate"] == 2e-5
    assert sft2["dataset"].endswith("sft2_data.jsonl")
    # stage 7: the teacher's kept answers to new prompts (not stage 5's, none held out); the base model learns
    # them by SFT (sequence-level distillation, the stage's model) and by logit distillation, same rows and steps
    student = json.loads((tmp_path / "7-distill" / "config.json").read_text())
    logit = json.loads((tmp_path / "7-logit-kd" / "config.json").read_text())
    answers = tmp_path / "7-distill" / "teacher-answers"
    assert student["dataset"] == logit["dataset"] == str(answers / "kept.jsonl")
    assert student["alpha"] == 0 and logit["alpha"] == 1 and student["student"] == logit["student"] == "tiny"
    assert student["max_steps"] == logit["max_steps"] == 2
    asked = {json.loads(line)["problem"] for line in (answers / "samples.jsonl").read_text().splitlines()}
    stage5 = {json.loads(line)["problem"]
              for line in (tmp_path / "5-rejection" / "samples.jsonl").read_text().splitlines()}
    held_out = {r["problem"] for r in load_math("arithmetic:3", "test", 300)}
    assert len(asked) == 4 and not asked & stage5 and not asked & held_out
    # every comparison the report promises, paired on the same problems, with the numbers it printed
    results = json.loads((tmp_path / "8-eval" / "results.json").read_text())
    assert sorted(results["comparisons"]) == sorted(f"{a} vs {b}, T=1" for a, b in [
        ("1-r1-zero", "0-base"), ("4-grpo2", "3-sft1"), ("6-sft2", "3-sft1"), ("6-sft2", "4-grpo2"),
        ("7-logit-kd", "7-distill")])
    for name, c in results["comparisons"].items():
        trained, baseline = name.split(", ")[0].split(" vs ")
        per = results["models"]
        diff = [b - a for a, b in zip(per[baseline]["T=1"]["per_problem"], per[trained]["T=1"]["per_problem"])]
        assert c["diff"] == pytest.approx(sum(diff) / len(diff)) and c["gained"] == sum(d > 0 for d in diff)
    assert "What each stage bought" in report and "| 7-logit-kd |" in report and "## R1-Zero" in report
    assert "The student is the base model (tiny), the teacher's own size: this stage is not compression" in report
    assert "| SFT 2 (rejection-sampled data, from the GRPO model) vs SFT 1 (cold start) |" in report
    assert "| reward/tag_count |" in report
    kd = results["comparisons"]["7-logit-kd vs 7-distill, T=1"]   # the outcome of stage 7's comparison, in words
    assert distillation_outcome(kd, results["models"]["7-logit-kd"]["T=1"]["accuracy"],
                                results["models"]["7-distill"]["T=1"]["accuracy"]) in report

    # an unfinished training stage (its checkpoints there, no stage.json) is re-run afresh in its folder;
    # the evaluation measures again only the models whose weights changed (the two students)
    (tmp_path / "7-distill" / "stage.json").unlink()
    (tmp_path / "8-eval" / "stage.json").unlink()
    again = pipeline(tmp_path, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 6 and "== stage 7-distill" in again.stdout
    assert "== stage 8-eval" in again.stdout
    reused = sorted(line.split(":")[1].strip() for line in again.stdout.splitlines() if "reused from" in line)
    assert reused == ["0-base", "1-r1-zero", "3-sft1", "4-grpo2", "6-sft2"]
    later = json.loads((tmp_path / "8-eval" / "results.json").read_text())
    for name in reused:
        assert later["models"][name] == results["models"][name]
        assert later["model_seconds"][name] == results["model_seconds"][name]
    assert later["eval_seconds"] == pytest.approx(sum(later["model_seconds"].values()))

    # a failing stage stops the pipeline with its name (stages 1-4 kept from above)
    for stage in STAGES[4:]:
        (tmp_path / stage / "stage.json").unlink()
    failed = pipeline(tmp_path, "--resume", "--rejection-min-score", "100")
    assert failed.returncode != 0
    assert "pipeline stage 5-rejection failed" in failed.stderr and "lower --rejection-min-score" in failed.stderr


def test_evaluation_results_are_kept_per_model_and_reused_only_for_the_same_settings(tmp_path):
    from tasks import arithmetic_rows
    rows, runs = arithmetic_rows("test", 2, seed=0), [{"name": "T=1", "samples": 1, "temperature": 1.0}]
    cache, said = tmp_path / "models", []
    first, seconds = evaluate_all([("a", "tiny")], rows, runs, 8, 0, cache=cache, progress=said.append)
    assert (cache / "a.json").exists() and said == [] and seconds["a"] > 0
    same, again = evaluate_all([("a", "tiny")], rows, runs, 8, 0, cache=cache, progress=said.append)
    assert same == first and again == seconds and said == [f"eval: a: reused from {cache / 'a.json'}"]
    # another number of tokens, seed or problem set: measured again (and the file replaced)
    for changed in [dict(tokens=9), dict(seed=1), dict(rows=rows[:1])]:
        args = {"rows": rows, "tokens": 8, "seed": 0, **changed}
        said.clear()
        evaluate_all([("a", "tiny")], args["rows"], runs, args["tokens"], args["seed"], cache=cache,
                     progress=said.append)
        assert said == [], changed
    # a file cut short by a crash is measured again, not an error
    (cache / "a.json").write_text('{"key": ')
    said.clear()
    remeasured = evaluate_all([("a", "tiny")], rows, runs, 8, 0, cache=cache, progress=said.append)[0]
    assert said == [] and remeasured["a"]["T=1"]["per_problem"] == first["a"]["T=1"]["per_problem"]
    # a checkpoint folder is known by its files: rewriting one is another model
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"1")
    stamp = weights_stamp(str(folder))
    (folder / "model.safetensors").write_bytes(b"22")
    assert weights_stamp(str(folder)) != stamp and weights_stamp("tiny") == ["tiny"]


def test_refinement_and_filters_by_hand():
    raw = "Let me add 2 and 3. That is 5. So the answer is \\boxed{5}"
    assert refine(raw) == "<think>\nLet me add 2 and 3. That is 5. So the answer is\n</think>\n<answer>5</answer>"
    assert refine("no answer here") is None
    assert verdict(refine(raw), "\\boxed{5}") == "kept"
    assert verdict(refine(raw), "\\boxed{6}") == "wrong_answer"
    assert verdict("5", "\\boxed{5}") == "bad_format"


def test_the_report_says_how_the_teachers_distributions_did_against_its_answers_either_way():
    said = lambda low, high: distillation_outcome({"diff": (low + high) / 2, "diff_ci95": (low, high)}, 0.3, 0.25)
    assert said(0.01, 0.09).startswith("The teacher's distributions taught the student more than its answers alone, "
                                       "beyond the noise: logit distillation 0.300 vs SFT on the answers 0.250, "
                                       "+0.050 (95% CI +0.010 to +0.090)")
    assert said(-0.09, -0.01).startswith("The teacher's distributions taught the student less than its answers alone, "
                                         "beyond the noise: logit distillation 0.300 vs SFT on the answers 0.250, -0.050")
    assert said(-0.01, 0.0).startswith("The teacher's distributions taught the student as much as its answers alone, "
                                       "within the noise")   # an interval that touches 0 is within the noise


def test_the_report_says_where_sft2_started_and_a_bad_start_is_one_line():
    grpo = {"model": "runs/p/4-grpo2/checkpoint-8"}
    labels = lambda sft2: {(a, b): what for a, b, what in stage_comparisons({"4-grpo2": grpo, "6-sft2": sft2})}
    from_grpo, from_base = labels({"start": grpo["model"]}), labels({"start": "smollm2-135m"})
    assert from_grpo[("6-sft2", "3-sft1")] == "SFT 2 (rejection-sampled data, from the GRPO model) vs SFT 1 (cold start)"
    assert from_grpo[("6-sft2", "4-grpo2")] == "SFT 2 vs the GRPO model it started from, whose answers it learned"
    assert from_base[("6-sft2", "3-sft1")].endswith("both from the base model")
    assert from_base[("6-sft2", "4-grpo2")] == "SFT 2 vs the GRPO model whose answers it learned"
    assert labels({}) == from_base  # a run from before SFT 2 recorded its start: the base model, as then
    with pytest.raises(ValueError, match=r"^--sft2-from 'grpo2': choose grpo or base$"):
        PipelineConfig(sft2_from="grpo2")


def test_sft2_variants_bench_evaluates_as_the_report_does(tmp_path, monkeypatch):
    # bench/sft2_variants.py trains one variant and evaluates it with recipe.report.evaluate_all
    # (issue 28 item 11), paired with a finished run's records of the same problems
    import importlib.util
    import recipe.report
    from lm.loading import tiny_model, tiny_tokenizer
    start = tmp_path / "start"
    tiny_model(tiny_tokenizer()).save_pretrained(start)
    tiny_tokenizer().save_pretrained(start)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1", "completion": f"<think>x</think><answer>{i + 1}</answer>"})
                            + "\n" for i in range(4)))
    record = {"T=1": {"per_problem": [0.0, 1.0], "samples_per_problem": 2}}
    (tmp_path / "run" / "8-eval").mkdir(parents=True)
    (tmp_path / "run" / "8-eval" / "results.json").write_text(json.dumps(
        {"models": {name: record for name in ("3-sft1", "4-grpo2", "6-sft2")}}))
    calls = []
    real = recipe.report.evaluate_all
    monkeypatch.setattr(recipe.report, "evaluate_all", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    spec = importlib.util.spec_from_file_location("sft2_variants", ROOT / "bench" / "sft2_variants.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["sft2_variants.py", "--run", str(tmp_path / "run"), "--name", "v",
                                      "--start", str(start), "--data", str(data), "--steps", "1",
                                      "--out", str(tmp_path / "out")])
    bench.main()
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert len(calls) == 1 and len(calls[0][1]) == 2               # the run's two problems
    assert line["step"] == 1 and 0 <= line["acc"] <= 1 and set(line) >= {"vs 3-sft1", "vs 4-grpo2", "vs 6-sft2"}
