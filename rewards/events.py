"""Counts of what the rewards could not score normally (a side channel for the run's metrics).

Reward functions return plain floats; when one falls back to a documented value (an unparsable gold
solution, a verification that ran out of time, an input that is not text) it also counts the event
here. Loops read and reset the counts once per step and log them as `reward_events/<name>`.
"""
from collections import Counter
from threading import Lock

_counts: Counter = Counter()
_lock = Lock()


def count(name: str, n: int = 1) -> None:
    with _lock:
        _counts[name] += n


def take() -> dict[str, int]:
    """The counts since the last call, then reset."""
    with _lock:
        out = dict(_counts)
        _counts.clear()
    return out
