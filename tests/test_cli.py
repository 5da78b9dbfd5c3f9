import json
import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands_and_flags_with_defaults():
    top = run("--help")
    assert top.returncode == 0 and "chat" in top.stdout
    chat = run("chat", "--help")
    assert chat.returncode == 0 and "--max-new-tokens" in chat.stdout and "(default: 256)" in chat.stdout


def test_bad_flag_and_bad_value_give_one_line_errors():
    for args in (["chat", "--bogus", "1"], ["chat", "--max-new-tokens", "many"], ["nosuchcommand"]):
        out = run(*args)
        assert out.returncode == 2
        assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error:"), out.stderr
        assert "Traceback" not in out.stderr


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


def test_eval_reads_a_gsm8k_file_with_any_answer_format(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
                            + "\n" for i in range(3)))
    out = run("eval", "--model", "tiny", "--dataset", str(data), "--num-problems", "3", "--max-new-tokens", "4",
              "--answer-format", "auto", "--output-dir", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["models"]["tiny"]
    assert report["problems"] == 3 and 0 <= report["accuracy"] <= 1
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["solution"] for s in samples] == ["1", "2", "3"]
    from recipe.evaluate import EvalConfig   # a bad value: the config's one-line error (run.py prints it)
    with pytest.raises(ValueError, match=r"^--answer-format 'latex': choose one of r1, boxed, auto$"):
        EvalConfig(answer_format="latex")
