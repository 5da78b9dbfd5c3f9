"""`run.py chat`: one answer or a session, streamed, reasoning dimmed or hidden, Ctrl-C handled."""
import io
import subprocess
import sys

import pytest

import recipe.chat as chat
from conftest import ROOT
from lm import sample, tiny_model, tiny_tokenizer
from lm.chat import encode_prompt
from lm.sampling import stream


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("mode, expected", [
    ("show", "<think>ab</think><answer>4</answer>"),
    ("hide", "<answer>4</answer>"),
    ("dim", "\033[2m<think>\033[0m\033[2ma\033[0m\033[2mb\033[0m\033[2m</think>\033[0m<answer>4</answer>"),
])
def test_reasoning_is_shown_dimmed_or_hidden_even_when_a_tag_is_split(mode, expected):
    out, text = Terminal(), ""
    printer = chat.Printer(mode, out)
    for piece in ["<th", "ink>a", "b</", "think", "><answer>4</answer>"]:
        text += piece
        printer.update(text)
        assert "<th" not in out.getvalue() or "<think>" in out.getvalue()   # never half a tag
    printer.update(text, final=True)
    assert out.getvalue() == expected
    plain = io.StringIO()   # not a terminal: no escape codes
    chat.Printer("dim", plain).update(text, final=True)
    assert plain.getvalue() == "<think>ab</think><answer>4</answer>"


def test_stream_draws_what_sample_draws():
    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    prompt = encode_prompt(tok, "hi there")
    for temperature in (0.0, 0.9):
        s = sample(model, [prompt], max_new_tokens=30, temperature=temperature, top_k=10,
                   eos_token_id=tok.eos_token_id, keys=[5])
        ids = s.completion_ids[0][s.completion_mask[0].bool()].tolist()
        got = list(stream(model, prompt, max_new_tokens=30, temperature=temperature, top_k=10,
                          eos_token_id=tok.eos_token_id, key=5))
        assert got == [i for i in ids if i != tok.eos_token_id]


def test_a_session_keeps_the_conversation_without_reasoning_and_survives_ctrl_c(monkeypatch, capsys):
    tok = tiny_tokenizer()
    prompts, lines = [], iter(["first question", "second question", KeyboardInterrupt])

    def fake_stream(model, prompt, **kw):
        prompts.append(tok.decode(prompt))
        for i, piece in enumerate(["<think>", "r", "</think>", "<answer>", "7", "</answer>"]):
            if len(prompts) == 2 and i == 2:
                raise KeyboardInterrupt   # Ctrl-C in the middle of the second answer
            yield from tok(piece, add_special_tokens=False).input_ids

    def fake_input(prompt):
        line = next(lines)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt        # Ctrl-C at the prompt: the session ends, no traceback
        return line

    monkeypatch.setattr(chat, "stream", fake_stream)
    monkeypatch.setattr("builtins.input", fake_input)
    chat.main(chat.ChatConfig(model="tiny", think="show"))
    assert len(prompts) == 2
    assert "first question" in prompts[1] and "<answer>7</answer>" in prompts[1] and "<think>r" not in prompts[1]
    out = capsys.readouterr().out
    assert "<think>r</think><answer>7</answer>" in out and "<think>r [stopped]" in out
    # the banner says what Ctrl-C at the prompt does (it ended the session, said nowhere)
    assert "Ctrl-C stops an answer; an empty line, Ctrl-D or Ctrl-C here ends" in out


def test_run_py_chat_session_from_stdin():
    done = subprocess.run([sys.executable, "run.py", "chat", "--model", "tiny", "--max-new-tokens", "5"], cwd=ROOT,
                          input="hello\nand again\n\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.count("you> ") == 3 and done.stdout.count("[stopped at the token budget]") == 2
