"""Several processes (torchrun, gloo on this CPU): the same updates as one process, no hang when
ranks differ, and `torchrun run.py grpo` end to end with resume. Each group of configurations runs
in one process launch (tests/dist_cases.py)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from common.runlog import read_jsonl
from conftest import ROOT
from dist_cases import EQUAL

ENV = {**os.environ, "R1_DIST_TIMEOUT": "30", "OMP_NUM_THREADS": "1"}  # a hang fails within 30 s


def torchrun(*args, nproc=2, timeout=600):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def weights(folder):
    step = max(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))
    return AutoModelForCausalLM.from_pretrained(folder / f"checkpoint-{step}").state_dict()


@pytest.fixture(scope="module")
def equal_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    with open(out / "one.log", "w") as log:  # the one-process reference runs alongside the 2-process launch
        one = subprocess.Popen([sys.executable, "tests/dist_cases.py", str(out / "one"), "equal"], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env=ENV)
        two = torchrun("tests/dist_cases.py", str(out / "two"), "equal,faults")  # one launch for both
        assert one.wait(timeout=600) == 0, (out / "one.log").read_text()[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", list(EQUAL))
def test_two_processes_make_the_updates_of_one(equal_runs, name):
    one, two = weights(equal_runs / "one" / name), weights(equal_runs / "two" / name)
    differ = max((one[k] - two[k]).abs().max().item() for k in one)
    assert differ < 1e-5, (name, differ)
    a, b = read_jsonl(equal_runs / "one" / name / "metrics.jsonl"), read_jsonl(equal_runs / "two" / name / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]   # one line per step, from rank 0 only
    for key in ("loss", "reward", "reward_std", "trained_frac", "tokens", "kd", "grad_norm"):
        if key in a[0] and not (key == "trained_frac" and "fsdp" in name):  # --fsdp trains what has adv 0
            assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), (name, key)


def test_eval_and_sample_over_two_processes_write_what_one_writes(equal_runs):
    one, two = equal_runs / "one", equal_runs / "two"
    report = lambda run: json.loads((run / "eval" / "report.json").read_text())["models"]["tiny"]
    assert report(one)["problems"] == 5 and report(two) == pytest.approx({**report(one), "seconds": report(two)["seconds"]})
    for name in ("eval/samples.jsonl", "sample/samples.jsonl", "sample/kept.jsonl"):
        assert (two / name).read_text() == (one / name).read_text(), name   # the same completions, in order


def test_ranks_that_differ_never_hang(equal_runs):
    tmp_path = equal_runs / "two"   # the cases ran in the fixture's 2-process launch (a hang fails it in 30 s)
    zero = read_jsonl(tmp_path / "zero_on_one_rank" / "metrics.jsonl")
    assert all(0 < r["trained_frac"] <= 0.5 for r in zero)     # rank 0 trained nothing, rank 1 did
    assert [r["trained_frac"] for r in read_jsonl(tmp_path / "zero_on_one_rank_fsdp" / "metrics.jsonl")] == [1, 1]
    for name in ("nan_on_one_rank", "nan_on_one_rank_fsdp"):
        nan = read_jsonl(tmp_path / name / "metrics.jsonl")
        assert [r["skipped"] for r in nan] == [1, 0, 0], name  # both ranks skipped the first step together
    assert [r["step"] for r in read_jsonl(tmp_path / "out_of_time" / "metrics.jsonl")] == [1]
    for rank in (0, 1):   # a global batch that does not divide: the same one-line error on every rank
        assert (tmp_path / f"indivisible-{rank}.txt").read_text() == \
            "--prompts-per-step (3) must divide by the number of processes (2)"


def test_torchrun_grpo_end_to_end_and_resume(tmp_path):
    args = ["run.py", "grpo", "--model", "tiny", "--group-size", "4", "--prompts-per-step", "2",
            "--max-completion-length", "8", "--max-steps", "4", "--save-every", "2", "--keep-checkpoints", "5",
            "--learning-rate", "1e-3", "--eval-problems", "4", "--eval-every", "0", "--device", "cpu",
            "--reward-funcs", "tests.toy_rewards:vowel_share,format"]
    full = torchrun(*args, "--output-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    metrics = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4] and "eval/accuracy" in metrics[-1]
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-4") is not None
    # cut after step 2 (as if killed), then --resume in 2 processes: steps 3 and 4 come out the same
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoint-4")
    resumed = torchrun("run.py", "grpo", "--resume", str(tmp_path / "cut"))  # the run's own settings (config.json)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in again] == [0, 1, 2, 3, 4]
    for a, b in zip(metrics[3:], again[3:]):
        for key, value in a.items():
            if not key.startswith("time_") and not key.endswith("seconds") and key != "peak_memory_gib":
                assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (a["step"], key)
    # the same cut resumed with --fsdp: a checkpoint of either kind resumes in the other (updates
    # summed in another order: equal to float rounding)
    shutil.copytree(tmp_path / "full", tmp_path / "cut_fsdp")
    shutil.rmtree(tmp_path / "cut_fsdp" / "checkpoint-4")
    sharded = torchrun("run.py", "grpo", "--resume", str(tmp_path / "cut_fsdp"), *args[2:], "--fsdp")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    again = read_jsonl(tmp_path / "cut_fsdp" / "metrics.jsonl")
    for a, b in zip(metrics[3:], again[3:]):
        for key in ("loss", "reward", "grad_norm", "completion_len", "eval/accuracy"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "cut_fsdp" / "checkpoint-4").config.architectures == \
        ["LlamaForCausalLM"]
