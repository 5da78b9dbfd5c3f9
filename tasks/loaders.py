"""Dataset loaders: a spec string in, a list of row dicts out.

Specs:
    arithmetic            the built-in task, levels 1-3 (see tasks/arithmetic.py)
    arithmetic:4          one level;  arithmetic:3-5  a range of levels
    arithmetic:3x4        level 3's problems with 4 operands (any level or range, then xK)
    arithmetic:3+3x4      a mix: the parts' problems in turn (here level 3, then 3x4, then level 3...)
    path/to/file.jsonl    a local .jsonl, .json or .parquet file; a problem file without splits (all
                          but a .json object keyed by split) holds out a fixed tenth of its rows as
                          split test, trains on the rest (train), `all` is every row (`file_split`)
    owner/name            a Hugging Face hub dataset (needs the hub); owner/name:config for one of
                          its configurations (openai/gsm8k:main, HuggingFaceH4/MATH-500)

`load_math` returns rows with `problem` and `solution` (the gold answer; NuminaMath-TIR's columns, as
GRPO, eval and sampling read them), from any of the math sets' layouts (`math_row`):
    NuminaMath-TIR   problem, solution (a worked solution ending in \\boxed{...})
    GSM8K            question, answer (worked, ending in "#### 42")   -> problem, solution "42"
    MATH-500         problem, solution, answer                         -> the answer column is the gold
    AIME-style       problem, answer (a number)                        -> solution "N"
Their other columns are kept. `load_conversations` returns rows with `messages` (system, user, assistant), as
SFT and distillation read them, from Bespoke-Stratos `conversations`, chat `messages`,
`prompt`/`completion` pairs, or the built-in task's worked solutions.
A missing or empty column fails at load time with one line naming the file, the row and the column.
"""
import json
import os
import sys
from pathlib import Path

import torch

from lm.chat import SYSTEM_PROMPT
from tasks.arithmetic import arithmetic_rows

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """Bad dataset input; the message names the source, the row and the column."""


def parse_arithmetic_spec(spec: str) -> dict | None:
    """`arithmetic_rows` arguments (levels, operands) for an `arithmetic[:L or :A-B][xK]` spec; None
    if the spec is something else."""
    if spec == "arithmetic":
        return {"levels": (1, 2, 3), "operands": None}
    if not spec.startswith("arithmetic:"):
        return None
    text = spec.split(":", 1)[1]
    try:
        text, _, operands = text.partition("x")
        low, _, high = text.partition("-")
        return {"levels": tuple(range(int(low), int(high or low) + 1)), "operands": int(operands) if operands else None}
    except ValueError:
        raise DataError(f"dataset {spec!r}: write arithmetic:L, arithmetic:A-B (levels 1..5), "
                        f"optionally followed by xK for K operands") from None


def arithmetic_problems(spec: str, split: str, limit: int | None, seed: int) -> list[dict] | None:
    """The built-in task's rows for an `arithmetic...` spec (parts joined by + taken in turn); None
    if the spec is something else."""
    if not spec.startswith("arithmetic:") or "+" not in spec:
        arithmetic = parse_arithmetic_spec(spec)
        return None if arithmetic is None else arithmetic_rows(split, limit or 1000, seed=seed, **arithmetic)
    parts = spec.split(":", 1)[1].split("+")
    n = limit or 1000
    each = [[{**row, "source": f"arithmetic:{part}"}  # which part: the curriculum's prior is per source
             for row in arithmetic_problems(f"arithmetic:{part}", split, -(-n // len(parts)), seed)] for part in parts]
    return [row for turn in zip(*each) for row in turn][:n]


def stream_rows(rows: list[dict], seed: int, position: int, count: int) -> list[dict]:
    """`count` rows starting at `position` of an endless stream: each epoch the rows in a new order
    (seeded by seed and epoch), so position p names the same row in every run with that seed."""
    out = []
    for p in range(position, position + count):
        epoch, index = divmod(p, len(rows))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(rows[order[index].item()])
    return out


def read_file(path: Path, split: str) -> tuple[list, bool]:
    """(the rows of a local .jsonl, .json or .parquet file, whether they are the file's own `split`):
    only a .json object of lists keyed by split names has splits."""
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        return rows, False
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return data, False
        if split in data:
            return data[split], True
        if "data" in data:
            return data["data"], False
        raise DataError(f"{path} has no split {split!r}; its splits: {', '.join(map(str, data)) or '(none)'}")
    import pandas as pd
    return pd.read_parquet(path).to_dict("records"), False


def read_rows(spec: str, split: str = "train") -> list[dict]:
    """Rows of a local file or hub dataset, unvalidated (a local file's rows whatever the split, unless
    it has splits)."""
    return read_split(spec, split)[0]


def read_split(spec: str, split: str) -> tuple[list[dict], bool]:
    """(rows, whether they are `split` itself): a hub dataset's split, or a local file (`read_file`)."""
    path = Path(spec)
    if path.suffix in FILE_SUFFIXES:
        return read_file(path, split)
    name, _, subset = spec.partition(":")  # openai/gsm8k:main names the hub dataset's configuration
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise DataError(f"dataset {spec!r}: not a .jsonl/.json/.parquet file, 'arithmetic', or a hub id")
    from datasets import load_dataset
    try:
        return list(load_dataset(name, subset or None, split=split)), True
    except Exception as e:  # offline, unknown id, unknown split: one line, the cause named
        raise DataError(f"dataset {spec!r} (split {split}) could not be loaded: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


_said: set = set()


def file_split(rows: list, source: str, split: str) -> list:
    """A split of a problem file that has none: `test` is a fixed tenth of its rows (at most 1,000,
    drawn with seed 0: the same rows in every run, whatever --seed), `train` the other rows, `all`
    every row. So GRPO's evaluation on its own training file, and `run.py eval` of that file, score
    problems that training never saw. Said once on the console."""
    if split not in ("train", "test", "all"):
        raise DataError(f"{source} has no split {split!r}: a file without splits has train (all but a "
                        f"held-out tenth), test (that tenth) and all")
    n = len(rows)
    held = set(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:min(1000, n // 10)].tolist())
    out = rows if split == "all" else [r for i, r in enumerate(rows) if (i in held) == (split == "test")]
    if not out:
        raise DataError(f"{source}: {n} rows are too few to hold a tenth out for split test; "
                        f"--split all scores every row, --eval-dataset names a held-out file")
    if (source, split) not in _said and os.environ.get("RANK", "0") == "0":
        _said.add((source, split))
        print(f"{source} has no splits: split {split} is {len(out)} of its {n} rows (test: a fixed tenth, "
              f"the same in every run, never trained on; train: the rest; all: every row)", file=sys.stderr)
    return out


def require(rows: list[dict], columns: tuple[str, ...], source: str) -> None:
    if not rows:
        raise DataError(f"{source}: no rows")
    for i, row in enumerate(rows):
        for column in columns:
            value = row.get(column) if isinstance(row, dict) else None
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                raise DataError(f"{source} row {i}: column {column!r} is missing or empty")


def math_row(row: dict, index: int, source: str) -> dict:
    """One row of any supported math layout (module docstring) with `problem` and `solution` set from
    the right columns: GSM8K's number after "####", the `answer` column where there is one."""
    if not isinstance(row, dict):
        raise DataError(f"{source} row {index}: not a JSON object")
    if "problem" not in row and "question" in row:  # GSM8K
        answer = str(row.get("answer") or "")
        if "####" not in answer:
            raise DataError(f"{source} row {index}: GSM8K-style row without '#### <answer>' in its 'answer' column")
        return {**row, "problem": row["question"], "solution": answer.split("####")[-1].strip().replace(",", "")}
    if row.get("answer") not in (None, ""):  # MATH-500, AIME: the answer column is the gold
        answer = str(row["answer"]).strip()
        latex = "\\" in answer and "\\boxed" not in answer  # math-verify reads bare LaTeX in a box
        return {**row, "solution": f"\\boxed{{{answer}}}" if latex else answer}
    return row


def load_math(spec: str, split: str = "train", limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows with `problem` and `solution` (the gold answer in `\\boxed{}` or plain)."""
    arithmetic = arithmetic_problems(spec, split, limit, seed)
    if arithmetic is not None:
        return arithmetic
    raw, has_split = read_split(spec, split)
    rows = [math_row(row, i, spec) for i, row in enumerate(raw[:limit] if has_split else raw)]
    require(rows, ("problem", "solution"), spec)
    return rows if has_split else file_split(rows, spec, split)[:limit]


def to_messages(row: dict, index: int, source: str) -> list[dict]:
    """One conversation (system, user, assistant) from any of the supported row layouts."""
    if "messages" in row and row["messages"]:
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    elif "conversations" in row and row["conversations"]:  # Bespoke-Stratos: from/value turns
        roles = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
        messages = [{"role": roles.get(t["from"], t["from"]), "content": t["value"]}
                    for t in row["conversations"]]
        if row.get("system"):
            messages = [{"role": "system", "content": row["system"]}] + messages
    elif "prompt" in row and "completion" in row:
        prompt = row["prompt"]
        messages = (list(prompt) if isinstance(prompt, list)
                    else [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}])
        completion = row["completion"]
        messages += list(completion) if isinstance(completion, list) else [
            {"role": "assistant", "content": completion}]
    else:
        raise DataError(f"{source} row {index}: needs a 'messages', 'conversations' or "
                        f"'prompt'+'completion' column")
    if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise DataError(f"{source} row {index}: the conversation must end with a non-empty assistant message")
    return messages


def load_conversations(spec: str, split: str = "train", limit: int | None = None,
                       seed: int = 0) -> list[dict]:
    """Rows with `messages`; the built-in task gives its worked R1-format solutions."""
    arithmetic = arithmetic_problems(spec, split, limit, seed)
    if arithmetic is not None:
        return [{"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                              {"role": "user", "content": r["problem"]},
                              {"role": "assistant", "content": r["worked"]}],
                 "problem": r["problem"], "solution": r["solution"]}
                for r in arithmetic]
    rows = read_rows(spec, split)[:limit]
    if not rows:
        raise DataError(f"{spec}: no rows")
    return [{**row, "messages": to_messages(row, i, spec)} for i, row in enumerate(rows)]
