import json
import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands_and_flags_with_defaults(capsys):
    top = run("--help")
    assert top.returncode == 0 and "a conversation, or one question" in top.stdout   # chat is both
    import run as run_py  # a command's --help in-process (its import is the slow part of a launch)
    with pytest.raises(SystemExit) as done:
        run_py.main(["chat", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--max-new-tokens" in out and "(default: 256)" in out


def test_bad_flag_and_bad_value_give_one_line_errors(capsys):
    for args in (["chat", "--bogus", "1"], ["nosuchcommand"]):  # as a user meets them: a process, one line
        out = run(*args)
        assert out.returncode == 2
        assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error:"), out.stderr
        assert "Traceback" not in out.stderr
    import run as run_py
    assert run_py.main(["chat", "--max-new-tokens", "many"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error:") and "--max-new-tokens" in err, err


def test_chat_answers_with_tiny_model_and_config_file(tmp_path):
    cfg = tmp_path / "chat.yaml"
    cfg.write_text("model: tiny\nmax-new-tokens: 5\n")
    out = run("chat", "What is 2 + 3 * 4?", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "[stopped at the token budget]" in out.stdout or out.stdout.strip()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modle": "tiny"}))
    from common.config import ConfigError, parse_config   # run.py prints a ConfigError as its one line
    from recipe.chat import ChatConfig
    with pytest.raises(ConfigError, match=r"--config .*bad.json: unknown field\(s\) modle$"):
        parse_config(ChatConfig, ["hi", "--config", str(bad)], prog="run.py chat")


def test_fsdp_outside_torchrun_is_a_one_line_error(tmp_path):
    from common.config import ConfigError   # run.py prints a ConfigError as its one line
    from sft.train import SFTConfig, main
    with pytest.raises(ConfigError, match=r"^--fsdp shards a model over several processes: launch with torchrun$"):
        main(SFTConfig(model="tiny", fsdp=True, max_steps=1, output_dir=str(tmp_path)))


def test_eval_reads_a_gsm8k_file_with_any_answer_format_on_its_held_out_tenth(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
                            + "\n" for i in range(30)))
    out = run("eval", "--model", "tiny", "--dataset", str(data), "--num-problems", "5", "--max-new-tokens", "4",
              "--answer-format", "auto", "--output-dir", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    assert "gsm8k.jsonl has no splits: split test is 3 of its 30 rows" in out.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["models"]["tiny"]
    assert report["problems"] == 3 and 0 <= report["accuracy"] <= 1
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    from tasks import load_math   # the file's fixed held-out tenth, which GRPO's train split never holds
    train = {r["solution"] for r in load_math(str(data), "train")}
    assert len(train) == 27 and not train & {s["solution"] for s in samples}
    from recipe.evaluate import EvalConfig, main   # a bad value: the config's one-line error (run.py prints it)
    with pytest.raises(ValueError, match=r"^--answer-format 'latex': choose one of r1, boxed, auto$"):
        EvalConfig(answer_format="latex")
    with pytest.raises(ValueError, match=r"gsm8k.jsonl has no split 'no_such_split': a file without splits"):
        main(EvalConfig(model="tiny", dataset=str(data), split="no_such_split", output_dir=str(tmp_path / "e2")))


def test_a_newcomers_mistakes_are_one_line_errors(tmp_path, monkeypatch, capsys):
    from common.config import ConfigError, parse_config
    from grpo.config import GRPOConfig
    import run
    parse = lambda *argv: parse_config(GRPOConfig, list(argv), prog="run.py grpo")
    # an abbreviated flag is not taken for the one it abbreviates
    with pytest.raises(ConfigError, match="unrecognized arguments: --max-comp 16"):
        parse("--max-comp", "16")
    # a YAML file: the flags' aliases are accepted, a broken file names its line
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text("num_generations: 4\nmax-completion-length: 16\n")
    assert (parse("--config", str(good)).group_size, parse("--config", str(good)).max_completion_length) == (4, 16)
    broken.write_text("group_size: 4\nbeta: [0.1\n")
    with pytest.raises(ConfigError, match=r"^--config .*broken.yaml: not valid YAML: line 3: .*$"):
        parse("--config", str(broken))
    both = tmp_path / "both.yaml"
    both.write_text("group_size: 4\nnum_generations: 8\n")
    with pytest.raises(ConfigError, match="num_generations sets group_size a second time"):
        parse("--config", str(both))
    # a reward module of one's own: broken, importing a missing package, in the current folder
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    (tmp_path / "syntax_broken.py").write_text("def reward(completions, **kw):\n    return [1.0 for c in completions\n")
    (tmp_path / "needs_pkg.py").write_text("import no_such_package_here\n")
    (tmp_path / "mine.py").write_text("def reward(completions, **kw):\n    return [0.0] * len(completions)\n")
    # run.py run by path from another folder imports rewards from the current one: here the config
    # gets past the reward (mine:reward is found) and stops at the next bad flag
    assert run.main(["grpo", "--reward-funcs", "mine:reward", "--report-to", "nowhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--report-to" in err and "reward" not in err and len(err.splitlines()) == 1
    assert sys.path[1] == str(tmp_path)  # after the project's own folder: mine.py never shadows it
    with pytest.raises(ConfigError, match=r"^--reward-funcs syntax_broken:reward: syntax_broken failed to import: "
                                          r"SyntaxError: .*syntax_broken.py, line 2\)$"):
        parse("--reward-funcs", "syntax_broken:reward")
    with pytest.raises(ConfigError, match="needs_pkg imports 'no_such_package_here', which is not installed"):
        parse("--reward-funcs", "needs_pkg:reward")


def test_a_hub_model_without_network_fails_fast_in_one_line(monkeypatch, capsys):
    import time
    import run
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")     # nothing listens there
    start = time.time()
    assert run.main(["eval", "--model", "someone/no-such-model-here", "--num-problems", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert time.time() - start < 15 and len(err.splitlines()) == 1, err
    assert err.startswith("error: run.py eval: --model 'someone/no-such-model-here': the Hugging Face hub "
                          "(http://127.0.0.1:9) cannot be reached") and "--model DIR" in err


def test_the_readme_is_a_place_to_start_and_stays_true():
    import re
    import shlex
    from common.config import _Parser, parse_config
    from grpo.config import GRPOConfig
    from rewards import REGISTRY, score
    from rewards.registry import RewardSpec
    from sft.train import SFTConfig
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    order = ["## Two commands", "## A first run", "## Commands", "## On your own GPU", "## Coming from TRL",
             "## Rewards", "## Results"]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    section = lambda h: text[text.index(h):text.index("\n## ", text.index(h) + 1)]
    # the first run's commands parse as written
    first = re.findall(r"run\.py sft (.*?)\n\.venv", section("## A first run").replace("\\\n", ""), re.S)[0]
    assert parse_config(SFTConfig, shlex.split(first), prog="sft").max_steps == 8
    # every flag of ours in the TRL table exists
    flags = {o for a in _Parser(GRPOConfig)._actions for o in a.option_strings}
    ours = {f for row in section("## Coming from TRL").splitlines()[4:] for f in re.findall(r"--[a-z-]+", row.split("|")[2])}
    assert ours and ours <= flags, ours - flags
    # every built-in reward is listed, and the two ways of writing one's own work as shown
    assert all(f"| `{name}` |" in section("## Rewards") for name in REGISTRY)
    code = re.findall(r"```python\n(.*?)```", section("## Rewards"), re.S)[0]
    mine = {}
    exec(code, mine)
    for name in ("short", "short_chat"):
        spec = RewardSpec(name, mine[name], 1.0, takes=None)
        assert score([spec], ["x" * 10, "x" * 300], {"problem": ["p", "p"]})[1] == [1.0, 0.0], name
