"""The math-verify worker from every way a user calls the rewards, each as its own process.

The worker used to start with multiprocessing's "spawn", which re-runs the caller's main module in
the child: an unguarded script and a script piped to `python -` died with a bare EOFError.
"""
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT
from rewards.verify import Verifier

SCRIPT = f"""import sys
sys.path.insert(0, {str(ROOT)!r})
from rewards import accuracy_reward, get_cosine_scaled_reward
print(accuracy_reward(["<think>2+12=14</think><answer>14</answer>"], solution=["$\\\\boxed{{14}}$"])[0])
print(get_cosine_scaled_reward()(["<answer>14</answer>"], solution=["14"])[0] > 0.9)
assert "torch" not in sys.modules, "the rewards import torch: a plain script pays seconds for nothing"
"""


def python(args, cwd, **kw):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, **kw)


def test_an_unguarded_script(tmp_path):
    (tmp_path / "plain.py").write_text(SCRIPT)
    proc = python(["plain.py"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "True"], proc.stderr[-2000:]
    assert proc.stderr == ""                       # and nothing from the atexit hook


def test_a_script_on_stdin(tmp_path):
    proc = python(["-"], tmp_path, input=SCRIPT)
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "True"], proc.stderr[-2000:]


def test_python_dash_c(tmp_path):
    proc = python(["-c", SCRIPT], tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "True"], proc.stderr[-2000:]


def test_a_call_from_a_thread_of_a_script(tmp_path):
    threaded = SCRIPT.replace("print(accuracy_reward(", "import threading\nout = []\nt = threading.Thread("
                              "target=lambda: out.append(accuracy_reward(", 1)
    threaded = threaded.replace(")[0])\nprint(get", ")[0]))\nt.start(); t.join(); print(out[0])\nprint(get", 1)
    (tmp_path / "threaded.py").write_text(threaded)
    proc = python(["threaded.py"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["1.0", "True"], proc.stderr[-2000:]


def test_run_py_grpo_scores_through_the_worker(tmp_path):
    out = tmp_path / "run"
    proc = python(["run.py", "grpo", "--model", "tiny", "--group-size", "2", "--prompts-per-step", "1",
                   "--max-completion-length", "4", "--max-steps", "1", "--eval-every", "-1", "--output-dir", str(out),
                   "--reward-funcs", "tests.toy_rewards:verified_gold"], ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["reward/tests.toy_rewards:verified_gold"] == 1.0
    assert not any(k.startswith("reward_events/") for k in record), record


def test_a_worker_that_cannot_start_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="could not start: /no/such/python"):
        Verifier(python="/no/such/python").check([("1", "1")])
    broken = tmp_path / "python"  # an interpreter without math-verify
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'math_verify'\" >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    verifier = Verifier(python=str(broken))
    with pytest.raises(RuntimeError, match="did not start .*No module named 'math_verify'"):
        verifier.check([("1", "1")])
    verifier.close()
    verifier.close()                               # twice, as an atexit hook may


def test_a_killed_worker_is_restarted_and_results_are_memoised():
    verifier = Verifier()
    assert verifier.check([("\\boxed{3}", "3")]) == ["correct"]
    dead = verifier._process
    dead.kill()
    dead.wait()
    assert verifier.check([("\\boxed{3}", "3")]) == ["correct"]   # from the memo: no worker asked
    assert verifier._process is dead
    assert verifier.check([("\\boxed{3}", "4"), ("\\boxed{3}", "3")]) == ["wrong", "correct"]
    assert verifier._process is not dead and verifier._process.poll() is None  # a new worker
    verifier.close()
