"""`run.py sft` and `run.py distill` on tiny models: outputs, students cut from teachers (exact resume: test_faults.py)."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import ROOT
from distill.student import layer_choice, student_from_teacher
from distill.train import check_same_tokenizer
from lm.loading import tiny_model, tiny_tokenizer


def run(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def changed_share(path, reference) -> float:
    trained = AutoModelForCausalLM.from_pretrained(path).state_dict()
    ref = reference.state_dict()
    same = [torch.equal(trained[k], ref[k]) for k in trained if k in ref]
    return 1 - sum(same) / len(same)


def test_run_py_sft_trains_packed_and_writes_outputs(tmp_path):
    out = tmp_path / "sft"
    proc = run("sft", "--model", "tiny", "--train-examples", "30", "--max-length", "1400", "--max-steps", "3",
               "--gradient-accumulation-steps", "2", "--learning-rate", "1e-3", "--eval-problems", "3",
               "--eval-max-new-tokens", "6", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 examples (0 truncated, 0 dropped" in proc.stdout and " in 30 packed rows" not in proc.stdout
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all(m["tokens"] > 0 and m["tokens_per_second"] > 0 for m in metrics[1:])
    assert metrics[3]["loss"] < metrics[1]["loss"]            # lr 1e-3 on a tiny model: it learns
    assert (out / "training_curves.png").exists() and (out / "config.json").exists()
    assert changed_share(out / "checkpoint-3", tiny_model()) > 0.5
    # the run ends saying where its checkpoint is and what changed (q = 1 of 3 steps: first and last)
    assert f"last checkpoint: {out / 'checkpoint-3'}\n" in proc.stdout
    assert f"loss {metrics[1]['loss']:.3f} in the first quarter of the steps -> {metrics[3]['loss']:.3f}" in proc.stdout
    assert (f"held-out accuracy {metrics[0]['eval/accuracy']:.3f} -> {metrics[3]['eval/accuracy']:.3f}, format "
            f"{metrics[0]['eval/format_rate']:.3f} -> {metrics[3]['eval/format_rate']:.3f}") in proc.stdout


def test_truncation_is_counted_in_the_log(tmp_path):
    proc = run("sft", "--model", "tiny", "--train-examples", "30", "--max-length", "600", "--max-steps", "1",
               "--overflow", "drop", "--eval-every", "-1", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped at --max-length 600" in proc.stdout and "(0 truncated, 0 dropped" not in proc.stdout
    from sft.train import SFTConfig, main
    from tasks import DataError   # run.py prints a DataError as its one line
    with pytest.raises(DataError, match="no example fits in --max-length 50"):
        main(SFTConfig(model="tiny", max_length=50, output_dir=str(tmp_path / "b")))


def test_layer_choice():
    assert len(layer_choice("", 30)) == 15 and layer_choice("", 30)[0] == 0 and layer_choice("", 30)[-1] == 29
    assert layer_choice("4", 10) == [0, 3, 6, 9]               # evenly spaced: round(i * 9 / 3)
    assert layer_choice("0,2,4", 6) == [0, 2, 4] and layer_choice("3,", 6) == [3] and layer_choice("3", 6) == [0, 2, 5]
    with pytest.raises(ValueError, match="has 6 layers"):
        layer_choice("7", 6)
    with pytest.raises(ValueError, match="distinct layers"):
        layer_choice("0,0", 6)


def test_student_with_all_layers_equals_teacher_and_half_is_smaller():
    tok = tiny_tokenizer()
    teacher = tiny_model(tok, num_layers=4).eval()
    ids = torch.tensor([tok("What is 2 + 2?").input_ids])
    full = student_from_teacher(teacher, [0, 1, 2, 3]).eval()
    assert torch.allclose(full(ids).logits, teacher(ids).logits, atol=1e-6)
    half = student_from_teacher(teacher, [0, 3]).eval()
    assert half.config.num_hidden_layers == 2
    assert torch.equal(half.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)


def test_greedy_layer_choice_drops_what_a_copy_per_candidate_says_matters_least():
    """greedy:N swaps layers in place on the teacher; the second method builds a student copy for each
    candidate drop and measures it. A layer with zero output projections is the identity (its residual
    adds 0), so dropping it leaves the loss exactly the full model's."""
    from distill.student import cut_student, greedy_layers
    from lm.logprobs import target_nll
    from sft.data import prepare
    tok = tiny_tokenizer()
    teacher = tiny_model(tok, num_layers=4).eval()
    with torch.no_grad():
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    batch = prepare(tok, "arithmetic", 6, 700, "truncate", True, 1, 0)[0][0]

    def loss(model):
        with torch.no_grad():
            nll, n = target_nll(model, batch.input_ids, batch.targets, position_ids=batch.position_ids)
        return nll.item() / n

    full = loss(teacher)
    by_copy = {i: loss(student_from_teacher(teacher, [k for k in range(4) if k != i]).eval()) for i in range(4)}
    assert by_copy[2] == pytest.approx(full, abs=1e-6)
    said = []
    keep = greedy_layers(teacher, batch, 3, said.append)
    assert keep == [k for k in range(4) if k != min(by_copy, key=by_copy.get)]
    assert f"loss {min(by_copy.values()):.3f}" in said[0]
    assert teacher.config.num_hidden_layers == 4 and len(teacher.model.layers) == 4 and loss(teacher) == full
    student, layers = cut_student(teacher, "greedy:2", batch, said.append)
    assert len(layers) == 2 and set(layers) < set(keep) and student.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="greedy:N"):
        cut_student(teacher, "greedy:", batch)
    with pytest.raises(ValueError, match="has 4 layers"):
        cut_student(teacher, "greedy:5", batch)


def test_different_vocabularies_are_refused():
    a = tiny_tokenizer()
    b = tiny_tokenizer()
    b.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="different vocabularies"):
        check_same_tokenizer(a, b, "t", "s")
    check_same_tokenizer(a, tiny_tokenizer(), "t", "s")


def test_run_py_distill_trains_a_greedy_half_student(tmp_path):
    out = tmp_path / "distill"
    teacher_dir = tmp_path / "teacher"
    tiny_model(tiny_tokenizer(), num_layers=4).save_pretrained(teacher_dir)
    tiny_tokenizer().save_pretrained(teacher_dir)
    proc = run("distill", "--teacher", str(teacher_dir), "--train-examples", "20", "--max-steps", "2",
               "--eval-every", "-1", "--learning-rate", "1e-3", "--output-dir", str(out),
               "--student-from-teacher-layers", "greedy:2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("greedy layer choice: dropped layer") == 2
    layers = json.loads((out / "student.json").read_text())["layers"]
    assert len(layers) == 2 and f"student: teacher layers {layers}" in proc.stdout
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["kd"] >= 0 for m in metrics)
    student = AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    assert student.config.num_hidden_layers == 2
    assert f"last checkpoint: {out / 'checkpoint-2'}\n" in proc.stdout and "loss " in proc.stdout


def test_report_to_tensorboard_writes_the_metrics_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import grpo.train
    from grpo.config import GRPOConfig
    last = grpo.train.main(GRPOConfig(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=8,
                                      max_steps=2, eval_every=-1, save_every=2, learning_rate=1e-3,
                                      reward_funcs="tests.toy_rewards:vowel_share", report_to="tensorboard",
                                      output_dir=str(tmp_path)))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"reward", "loss", "grad_norm", "signal_frac"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("reward")] == [1, 2]
    assert events.Scalars("reward")[-1].value == pytest.approx(last["reward"], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"] and "samples/text_summary" in events.Tags()["tensors"]


def test_report_to_a_missing_tracker_is_a_one_line_error(tmp_path):
    from common.config import ConfigError
    from sft.train import SFTConfig, main
    with pytest.raises(ValueError, match="--report-to 'mlflow': unknown mlflow"):
        SFTConfig(model="tiny", report_to="mlflow")
    try:
        import wandb  # noqa: F401  (optional: not in requirements.txt)
    except ImportError:
        with pytest.raises(ConfigError, match="--report-to wandb needs the package wandb: pip install wandb"):
            main(SFTConfig(model="tiny", report_to="wandb", max_steps=1, eval_every=-1, output_dir=str(tmp_path)))


def test_sft_and_distill_stop_at_the_time_budget_with_a_checkpoint(tmp_path):
    from distill.train import DistillConfig
    from distill.train import main as distill
    from sft.train import SFTConfig, main
    kw = dict(train_examples=8, max_length=700, max_steps=5, gradient_accumulation_steps=1, eval_every=-1,
              save_every=100, max_minutes=1e-9)
    main(SFTConfig(model="tiny", **kw, output_dir=str(tmp_path / "sft")))
    distill(DistillConfig(teacher="tiny", student_from_teacher_layers="1", **kw, output_dir=str(tmp_path / "kd")))
    for run in ("sft", "kd"):
        steps = [json.loads(line)["step"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1] and [p.name for p in (tmp_path / run).glob("checkpoint-*")] == ["checkpoint-1"], run
