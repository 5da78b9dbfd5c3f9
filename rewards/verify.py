"""Answer extraction and math-verify under a hard time limit that works off the main thread.

math-verify's own timeout uses `signal.alarm`, which works only in the main thread, and some inputs
make sympy run for minutes. So parsing and verification run in one worker process (a fresh Python
interpreter, `rewards/verify_worker.py`); the parent waits for each item at most `timeout` seconds,
and on a timeout kills the worker, scores that item as "timeout" and restarts the worker for the
remaining items. A crash of the worker is handled the same way ("error"). Results are memoised by
(gold, answer), so the cosine reward's correctness check after the accuracy reward costs nothing.

The answer contract: an answer is read only outside the reasoning. Closed `<think>...</think>`
blocks, an unclosed `<think>` to the end of the text (a completion cut off mid-reasoning), and
everything before a `</think>` that was never opened (a prompt that ends with `<think>`) are
reasoning; the answer is the last `<answer>...</answer>` in what is left, else its last `\\boxed{}`
(`answer_format="r1"`, the training contract). For scoring models not trained on the tags,
`"boxed"` reads only the last `\\boxed{}`, and `"auto"` the tag, else the last `\\boxed{}`, else a
final "the answer is N" (evaluation's `--answer-format`).
"""
import atexit
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

WORKER = Path(__file__).with_name("verify_worker.py")
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)
ANSWER_FORMATS = ("r1", "boxed", "auto")
# "The answer is 42.", "final answer: $\\frac{1}{2}$": what follows, up to the end of its line
ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.I)
STATUSES = ("correct", "wrong", "gold_unparsable", "timeout", "error")
# Two plain numbers joined by +, -, * (or \times, \cdot, x-sign): arithmetic left undone. A number is
# plain when no letter, brace, caret or dot touches it, so x^2+3x, \frac{1}{2}+1, 3+2i and
# 6.02 \times 10^{23} are not matched.
UNEVALUATED = re.compile(r"(?<![\w.^{}])\d+(?:\.\d+)?\s*(?:[-+*\u00d7]|\\times|\\cdot)\s*\d+(?:\.\d+)?(?![\w.^{(])")


def outside_reasoning(text: str) -> str:
    """The text with every part of the reasoning removed (see the module docstring)."""
    if "</think>" in text.split("<think>", 1)[0]:  # reasoning opened by the prompt, closed here
        text = text.split("</think>", 1)[1]
    text = THINK_BLOCK.sub(" ", text)
    return text.split("<think>", 1)[0]  # an unclosed block runs to the end


def extract_answer(text: str, answer_format: str = "r1") -> str | None:
    """Outside the reasoning, by `answer_format` (see the module docstring): "r1" the last
    <answer>...</answer>'s content, without a tag the last \\boxed{...}; "boxed" the last \\boxed{...};
    "auto" as "r1", then the last "the answer is ..." phrase; else None."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer format {answer_format!r}: choose one of {', '.join(ANSWER_FORMATS)}")
    text = outside_reasoning(text)
    tags = ANSWER_TAG.findall(text) if answer_format != "boxed" else []
    if tags:
        return tags[-1].strip()
    boxed = last_boxed(text)
    if boxed is not None or answer_format != "auto":
        return boxed
    phrases = ANSWER_PHRASE.findall(text)
    if not phrases:
        return None
    return phrases[-1].strip().rstrip(".!").strip("$ *").strip() or None


def is_unevaluated(answer: str) -> bool:
    """True for an answer that still holds arithmetic on plain numbers, such as the question copied
    into the tag (`<answer>9 + 1 + 9 * 6</answer>`): math-verify would evaluate it and call it right,
    and GRPO finds that shortcut. The accuracy reward scores it 0.0."""
    return UNEVALUATED.search(answer) is not None


def last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None  # unbalanced braces: no answer


class Verifier:
    """Parse and verify (gold, answer) pairs in a worker process, each item under a hard time limit.

    The worker is a fresh interpreter running `rewards/verify_worker.py` (see its docstring), started
    with `subprocess`: fork-then-exec, so no Python code runs in a forked copy of a process that holds
    torch threads, and the caller's main module is never imported again. `python` is the interpreter
    to start (the caller's own by default).
    """

    def __init__(self, timeout: float = 5.0, cache_size: int = 65536, python: str = sys.executable,
                 start_timeout: float = 120.0):
        self.timeout, self.python, self.start_timeout = timeout, python, start_timeout
        self._lock = threading.Lock()
        self._process = self._send = self._recv = None
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def _start(self) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()  # what the worker says if it dies; a file never fills up
        self._send = Connection(to_worker_w, readable=False)
        self._recv = Connection(from_worker_r, writable=False)
        try:
            self._process = subprocess.Popen(
                [self.python, str(WORKER), str(to_worker_r), str(from_worker_w)],
                pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._stderr)
        except OSError as e:
            self.close()
            raise RuntimeError(f"the math-verify worker could not start: {self.python}: {e}") from None
        finally:  # the worker's ends of the pipes belong to the worker now
            os.close(to_worker_r)
            os.close(from_worker_w)
        # importing sympy and math-verify takes a few seconds: not part of any item's time limit
        try:
            ready = self._recv.poll(self.start_timeout) and self._recv.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            why = self._worker_stderr() or f"no answer within {self.start_timeout:.0f} s"
            self.close()
            raise RuntimeError(f"the math-verify worker did not start ({self.python} {WORKER}): {why}")

    def _worker_stderr(self) -> str:
        """The last line the worker wrote to stderr (after it died), or ''."""
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def close(self) -> None:
        """Stop the worker; safe to call twice and from an atexit hook."""
        process, self._process = getattr(self, "_process", None), None
        for name in ("_send", "_recv", "_stderr"):
            handle = getattr(self, name, None)
            setattr(self, name, None)
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    pass
        if process is not None and process.poll() is None:
            try:
                process.kill()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def check(self, pairs: list[tuple[str, str]]) -> list[str]:
        """One status from STATUSES per (gold, answer) pair."""
        with self._lock:
            statuses = [self._cache.get(pair) for pair in pairs]
            todo = [(i, g, a) for i, ((g, a), s) in enumerate(zip(pairs, statuses)) if s is None]
            while todo:
                todo = self._run(todo, statuses)
            for pair, status in zip(pairs, statuses):
                if status in ("correct", "wrong", "gold_unparsable"):
                    self._cache[pair] = status
                    self._cache.move_to_end(pair)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return statuses

    def _run(self, todo, statuses) -> list:
        """Send the items, collect results; returns the items still to do after a timeout or crash."""
        if self._process is None or self._process.poll() is not None:
            self.close()
            self._start()
        try:
            self._send.send(todo)
        except OSError:  # the worker died between two calls: its first item counts as an error
            statuses[todo[0][0]] = "error"
            self.close()
            return todo[1:]
        for done, (index, _, _) in enumerate(todo):
            try:
                ready = self._recv.poll(self.timeout)
                result = self._recv.recv() if ready else None
            except (EOFError, OSError):
                result, ready = None, True
            if result is None:
                statuses[index] = "timeout" if not ready else "error"
                self.close()
                return todo[done + 1:]
            statuses[result[0]] = result[1]
        return []


_default: Verifier | None = None


def default_verifier() -> Verifier:
    global _default
    if _default is None:
        _default = Verifier()
        atexit.register(_default.close)
    return _default
