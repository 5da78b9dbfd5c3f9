"""Answer extraction and math-verify under a hard time limit that works off the main thread.

math-verify's own timeout uses `signal.alarm`, which works only in the main thread, and some inputs
make sympy run for minutes. So parsing and verification run in one child process; the parent waits
for each item at most `timeout` seconds, and on a timeout kills the child, scores that item as
"timeout" and restarts the child for the remaining items. A crash of the child is handled the same
way ("error"). Results are memoised by (gold, answer), so the cosine reward's correctness check after
the accuracy reward costs nothing.
"""
import atexit
import multiprocessing as mp
import re
import threading
from collections import OrderedDict

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
STATUSES = ("correct", "wrong", "gold_unparsable", "timeout", "error")
# Two plain numbers joined by +, -, * (or \times, \cdot, x-sign): arithmetic left undone. A number is
# plain when no letter, brace, caret or dot touches it, so x^2+3x, \frac{1}{2}+1, 3+2i and
# 6.02 \times 10^{23} are not matched.
UNEVALUATED = re.compile(r"(?<![\w.^{}])\d+(?:\.\d+)?\s*(?:[-+*\u00d7]|\\times|\\cdot)\s*\d+(?:\.\d+)?(?![\w.^{(])")


def extract_answer(text: str) -> str | None:
    """The last <answer>...</answer>'s content; without a tag, the last \\boxed{...}; else None."""
    tags = ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    return last_boxed(text)


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


def _worker(conn) -> None:
    """Child process: receive [(index, gold, answer)], send (index, status) for each in turn."""
    import logging
    from functools import lru_cache

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    @lru_cache(maxsize=4096)
    def parsed(text: str):
        result = parse(text, extraction_config=config, parsing_timeout=None)
        if not result and "\\" in text and "$" not in text:  # bare LaTeX such as \frac{1}{2}
            result = parse(f"${text}$", extraction_config=config, parsing_timeout=None)
        return result

    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        for index, gold, answer in items:
            try:
                gold_parsed = parsed(gold)
                if not gold_parsed:
                    status = "gold_unparsable"
                else:
                    ok = verify(gold_parsed, parsed(answer), timeout_seconds=None)
                    status = "correct" if ok else "wrong"
            except Exception:  # a sympy failure on one item scores that item, never the batch
                status = "error"
            conn.send((index, status))


class Verifier:
    def __init__(self, timeout: float = 5.0, cache_size: int = 65536):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        # importing sympy and math-verify takes a few seconds: not part of any item's time limit
        if not parent.poll(120) or parent.recv() != "ready":
            self.close()
            raise RuntimeError("the math-verify worker process did not start")

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._process = None

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
        if self._process is None or not self._process.is_alive():
            self._start()
        self._conn.send(todo)
        for done, (index, _, _) in enumerate(todo):
            try:
                ready = self._conn.poll(self.timeout)
                result = self._conn.recv() if ready else None
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
