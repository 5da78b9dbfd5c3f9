"""Runs never mix, never lose a checkpoint, and stop the same way in every loop.

- A training subprocess killed with SIGKILL at random moments, during checkpoint writes too, resumes
  from its last complete checkpoint and ends with the metrics of a run never interrupted.
- A fresh run refuses a folder that holds another run, unless told --resume or --overwrite.
- SFT and distillation: a non-finite step leaves the schedule where it was; three in a row stop the run.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import distill.train as distill_train
import sft.train as sft_train
from common.runlog import append_jsonl, read_jsonl, truncate_jsonl
from conftest import ROOT
from distill.train import DistillConfig
from lm import checkpoint as ckpt
from lm.loading import tiny_model, tiny_tokenizer
from sft.train import SFTConfig

GRPO = ["grpo", "--model", "tiny", "--group-size", "2", "--prompts-per-step", "1", "--max-completion-length", "6",
        "--max-steps", "16", "--save-every", "1", "--keep-checkpoints", "2", "--eval-every", "-1",
        "--reward-funcs", "tests.toy_rewards:vowel_share", "--learning-rate", "1e-3", "--lr-scheduler", "cosine",
        "--warmup-ratio", "0.2", "--log-samples", "1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def start(args, log):
    return subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV)


def wait_for(condition, process, timeout=120.0):
    """Poll until condition() or the process ends; True if the condition came first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.0005)
    raise TimeoutError("the training process made no progress")


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k != "peak_memory_gib"} for r in records]


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"  # the uninterrupted run, alongside (mostly imports and sleeps)
    with open(tmp_path / "reference.txt", "w") as log:
        uninterrupted = start([*GRPO, "--output-dir", str(reference)], log)
    out, rng = tmp_path / "killed", random.Random(0)
    kills, in_writes = 0, 0
    while kills < 3:  # two inside checkpoint writes, one anywhere in a step
        latest = ckpt.latest_checkpoint(out)
        at = int(latest.name.split("-")[1]) if latest else 0
        args = [*GRPO, "--output-dir", str(out)] if latest is None and kills == 0 else [*GRPO, "--resume", str(out)]
        if latest is None and kills > 0:  # killed before its first checkpoint: start afresh
            args = [*GRPO, "--output-dir", str(out), "--overwrite"]
        log_path = tmp_path / f"log-{kills}.txt"
        with open(log_path, "w") as log:
            process = start(args, log)
            if kills % 2 == 0:  # during a checkpoint write: once the one after the next has begun
                writing = out / f"checkpoint-{at + 2}.tmp"
                hit = wait_for(writing.exists, process)
            else:  # anywhere in the first two steps, once the loop has started (its progress bar)
                hit = wait_for(lambda: "grpo:" in log_path.read_text(), process)
                time.sleep(rng.uniform(0.0, 1.2))
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL, f"the run ended before kill {kills}: raise --max-steps"
        kills += 1
        in_writes += hit and kills % 2 == 1 and any(out.glob("checkpoint-*.tmp"))
        if latest is not None:  # it continued from the last complete checkpoint
            assert f"resumed from {latest} at step {at}" in log_path.read_text()
        survivor = ckpt.latest_checkpoint(out)
        if survivor is not None:  # whatever the kill interrupted, the newest listed checkpoint loads
            AutoModelForCausalLM.from_pretrained(survivor)
            assert ckpt.load_training_state(survivor, restore_rng=False)["step"] == int(survivor.name.split("-")[1])
    assert in_writes >= 1                     # at least one kill landed inside a checkpoint write
    final = subprocess.run([sys.executable, "run.py", *GRPO, "--resume", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert final.returncode == 0, final.stdout[-2000:]
    assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "reference.txt").read_text()[-2000:]
    expected, got = read_jsonl(reference / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 17))
    for a, b in zip(comparable(expected), comparable(got)):
        assert b.keys() == a.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (a["step"], key)
    assert not [p.name for p in out.iterdir() if p.suffix in (".tmp", ".old", ".trash")]


def test_a_fresh_run_refuses_a_folder_that_holds_another_run(tmp_path):
    kw = dict(model="tiny", train_examples=8, max_length=700, gradient_accumulation_steps=1, eval_every=-1,
              save_every=1, keep_checkpoints=10, output_dir=str(tmp_path))
    sft_train.main(SFTConfig(max_steps=3, **kw))
    again = subprocess.run([sys.executable, "run.py", "sft", "--model", "tiny", "--max-steps", "2", "--output-dir",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert f"{tmp_path} already holds another run (checkpoint-1, checkpoint-2, checkpoint-3, ...)" in again.stderr
    assert f"--resume {tmp_path}" in again.stderr and "--overwrite" in again.stderr
    with pytest.raises(ValueError, match="choose one"):
        SFTConfig(max_steps=2, overwrite=True, resume=str(tmp_path), **kw)
    sft_train.main(SFTConfig(max_steps=2, overwrite=True, **kw))
    # the earlier run's checkpoint-3 is gone: the newest checkpoint is this run's last
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_folder_with_only_a_config_is_not_another_run(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("")
    assert ckpt.start_run(tmp_path, "", overwrite=False) == (None, tmp_path)


def test_interrupted_saves_and_deletes_leave_complete_checkpoints(tmp_path):
    tok, model = tiny_tokenizer(), tiny_model()
    ckpt.save_checkpoint(tmp_path, 1, model, tok, {})
    ckpt.save_checkpoint(tmp_path, 2, model, tok, {})
    (tmp_path / "checkpoint-2").rename(tmp_path / "checkpoint-2.old")    # killed between a re-save's renames
    (tmp_path / "checkpoint-3.tmp").mkdir()                              # killed while writing step 3
    (tmp_path / "checkpoint-1").rename(tmp_path / "checkpoint-1.trash")  # killed while deleting step 1
    assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2.old"]
    ckpt.save_checkpoint(tmp_path, 4, model, tok, {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_torn_last_log_line_is_dropped_and_truncation_keeps_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # killed mid-append
    assert read_jsonl(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    truncate_jsonl(path, 1)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'


def test_log_lines_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": float("nan"), "grad_norm": torch.tensor(float("inf")),
                        "lists": [1.5, -float("inf")], "nested": {"kl": float("nan")}, "lr": 1e-5})
    assert path.read_text() == ('{"step": 1, "loss": null, "grad_norm": null, "lists": [1.5, null], '
                                '"nested": {"kl": null}, "lr": 1e-05}\n')

    def refuse(constant):  # what JSON.parse and jq do with NaN and Infinity
        raise ValueError(constant)
    path.write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 1.0}\n')  # a log written before the fix
    truncate_jsonl(path, 1)
    assert [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": None}]


# ---------------------------------------------------------------- one rule for a non-finite step
SFT_KW = dict(model="tiny", train_examples=12, max_length=700, max_steps=6, gradient_accumulation_steps=1,
              learning_rate=1e-3, eval_every=-1, save_every=1, keep_checkpoints=10, lr_scheduler="linear",
              warmup_ratio=0.5)


def nan_from_second_call(real):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        if calls["n"] == 1:
            return out
        return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")
    return wrapped


@pytest.mark.parametrize("loop", ["sft", "distill"])
def test_non_finite_steps_keep_the_schedule_and_three_stop_the_run(tmp_path, monkeypatch, loop):
    if loop == "sft":
        monkeypatch.setattr(sft_train, "sft_loss", nan_from_second_call(sft_train.sft_loss))
        main, config = sft_train.main, SFTConfig(output_dir=str(tmp_path), **SFT_KW)
    else:
        monkeypatch.setattr(distill_train, "distillation_loss", nan_from_second_call(distill_train.distillation_loss))
        main, config = distill_train.main, DistillConfig(teacher="tiny", output_dir=str(tmp_path), **{
            k: v for k, v in SFT_KW.items() if k != "model"})
    with pytest.raises(RuntimeError, match="3 updates in a row had a non-finite loss.*step 4.*checkpoint-3"):
        main(config)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [m["skipped"] for m in metrics] == [0, 1, 1, 1]
    # warmup over 3 steps: lr 1/3, 2/3, 1 of the peak; the skipped steps stay at the first step's
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3 * 2 / 3] * 4)
    assert not (tmp_path / "checkpoint-4").exists()
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-1").state_dict()
    three = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-3").state_dict()
    assert all(torch.equal(one[k], three[k]) for k in one)    # the skipped steps never touched the weights


@pytest.mark.parametrize("loop", ["sft", "distill"])
def test_resume_after_a_crash_matches_uninterrupted(tmp_path, monkeypatch, loop):
    common = dict(train_examples=24, max_length=700, max_steps=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                  eval_every=-1, save_every=2)
    module, loss_name, config_type, kw, keys = {
        "sft": (sft_train, "sft_loss", SFTConfig, dict(model="tiny", **common), ("loss", "lr", "grad_norm", "tokens")),
        "distill": (distill_train, "distillation_loss", DistillConfig,
                    dict(teacher="tiny", student_from_teacher_layers="1", **common),
                    ("loss", "kd", "ce", "lr", "grad_norm", "tokens"))}[loop]
    module.main(config_type(output_dir=str(tmp_path / "full"), **kw))
    expected = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    real, calls = getattr(module, loss_name), {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the third step's first micro-batch
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, loss_name, crash)
    with pytest.raises(RuntimeError, match="power cut"):
        module.main(config_type(output_dir=str(tmp_path / "cut"), **kw))
    monkeypatch.setattr(module, loss_name, real)
    module.main(config_type(output_dir="ignored", resume=str(tmp_path / "cut"), **kw))
    got = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got):
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)
