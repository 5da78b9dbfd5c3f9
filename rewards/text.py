"""Turning whatever a caller passes into text, so every reward returns its documented value."""
from rewards import events

MAX_CHARS = 200_000  # longer completions are scored on their first MAX_CHARS characters


def as_text(completion, reward: str) -> str:
    """A completion as a str: a str as is; a chat turn {'content': ...} or [{'content': ...}] (TRL's
    layout) by its content; anything else (None, numbers, bytes) is counted and read as ''."""
    if isinstance(completion, list) and completion and isinstance(completion[0], dict):
        completion = completion[-1].get("content")
    elif isinstance(completion, dict):
        completion = completion.get("content")
    if not isinstance(completion, str):
        events.count(f"{reward}/not_text")
        return ""
    return completion[:MAX_CHARS]


def column(columns: dict, name: str, n: int) -> list:
    """A per-completion column, or Nones when it is missing or the wrong length."""
    values = columns.get(name)
    if values is None or isinstance(values, str) or len(values) != n:
        return [None] * n
    return list(values)
