"""The math-verify worker: a separate Python process that parses and verifies answers.

Started by `rewards.verify.Verifier` as `python <this file> READ_FD WRITE_FD`: a fresh interpreter
that imports only math-verify, never the caller's main module (multiprocessing's "spawn" re-runs the
caller's script in the child, which breaks every unguarded script and `python -` on stdin). The two
file descriptors are pipes carrying pickled messages (`multiprocessing.connection.Connection`):

    worker -> parent   "ready"                      once math-verify is imported
    parent -> worker   [(index, gold, answer), ...]
    worker -> parent   (index, status)              one per item, in order; status in verify.STATUSES

The worker exits when the parent closes its end of the pipe.
"""
import sys

if __name__ == "__main__":  # run as a script, this folder comes first on sys.path, and its math.py
    sys.path.pop(0)         # would shadow the standard library's
import logging  # noqa: E402
from functools import lru_cache  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402


def serve(conn_in: Connection, conn_out: Connection) -> None:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    @lru_cache(maxsize=4096)
    def parsed(text: str):
        result = parse(text, extraction_config=config, parsing_timeout=None)
        if not result and "\\" in text and "$" not in text:  # bare LaTeX such as \frac{1}{2}
            result = parse(f"${text}$", extraction_config=config, parsing_timeout=None)
        return result

    conn_out.send("ready")
    while True:
        try:
            items = conn_in.recv()
        except (EOFError, OSError):
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
            conn_out.send((index, status))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
