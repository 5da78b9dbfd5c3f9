"""Rewards by name, with weights, and scoring a batch of completions with them.

    specs = build_rewards(["accuracy", "format"], [1.0, 0.5], max_completion_length=256)
    per_reward, total = score(specs, completions, {"solution": [...], "problem": [...]})

`per_reward[name]` keeps each function's raw values for the metrics; `total` is the weighted sum.
A function that raises on a batch is retried item by item; an item that still raises, or a value
that is not a finite number, scores 0.0 and is counted as `<name>/failed`. A function that fails on
every item of a batch also says so once on the console, with its first error.

Two calling conventions, as TRL's GRPOTrainer has them. Every function gets the columns of its
rows (`solution`, `problem`, ...), `completion_length`, `completion_ids` (token ids) and `prompts`
as keyword arguments, and the completions first:
    text      completions as strings, prompts as the problems' text (the built-in rewards)
    messages  TRL's conversational format, as TRL's and open-r1's examples read it
              (`completion[0]["content"]`): each completion `[{"role": "assistant", "content": text}]`,
              each prompt the message list the model was given (system prompt, then the user's problem)
A reward of your own (`module:function`) is found out on its first batch: called with strings, and
if it fails on every one of them, with messages; whichever scores is kept for the run and printed.
"""
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

from rewards import events
from rewards.math import accuracy_reward, get_cosine_scaled_reward
from rewards.structure import format_reward, reasoning_steps_reward, tag_count_reward
from rewards.style import (get_repetition_penalty_reward, get_soft_overlong_reward,
                           language_consistency_reward)

# name -> maker(max_completion_length) -> reward function
REGISTRY: dict[str, Callable] = {
    "accuracy": lambda max_len: accuracy_reward,
    "format": lambda max_len: format_reward,
    "reasoning_steps": lambda max_len: reasoning_steps_reward,
    "cosine": lambda max_len: get_cosine_scaled_reward(),
    "repetition_penalty": lambda max_len: get_repetition_penalty_reward(),
    "language_consistency": lambda max_len: language_consistency_reward,
    "tag_count": lambda max_len: tag_count_reward,
    "soft_overlong": lambda max_len: get_soft_overlong_reward(max_len, max(1, max_len // 4)),
}
# the tutorial's five GRPO rewards
TUTORIAL_REWARDS = ["accuracy", "format", "reasoning_steps", "cosine", "repetition_penalty"]


@dataclass
class RewardSpec:
    name: str
    fn: Callable
    weight: float
    takes: str | None = "text"  # "text" or "messages" (module docstring); None: not known yet
    warned: bool = False        # has said on the console that it failed on a whole batch


def import_reward(name: str) -> Callable | None:
    """A user's own reward given as `package.module:function`; None if there is no such module or
    function. A module that is there but fails to import (a syntax error, a missing package of its
    own, an exception) raises ValueError with one line that says why."""
    import importlib
    module, _, attr = name.partition(":")
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module or module.startswith(f"{e.name}."):  # the module (or its package) is not there
            return None
        raise ValueError(f"--reward-funcs {name}: {module} imports {e.name!r}, which is not installed") from None
    except ValueError:  # an empty or relative module name
        return None
    except Exception as e:
        where = f" ({e.filename}, line {e.lineno})" if isinstance(e, SyntaxError) else ""
        raise ValueError(f"--reward-funcs {name}: {module} failed to import: {type(e).__name__}: "
                         f"{getattr(e, 'msg', e)}{where}") from None
    return getattr(found, attr, None)


def parse_names_and_weights(names: str | list[str], weights: str | list | None) -> tuple[list[str], list[float]]:
    """`"accuracy,format"`, `"1,0.5"` -> checked lists; weights default to 1 each.

    Besides the registered names, `package.module:function` names a reward function of your own."""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in names if n not in REGISTRY and not (":" in n and import_reward(n))]
    if not names or unknown:
        raise ValueError(f"--reward-funcs: unknown reward {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(REGISTRY)}")
    if weights in (None, "", []):
        return names, [1.0] * len(names)
    parts = weights.split(",") if isinstance(weights, str) else list(weights)
    try:
        values = [float(w) for w in parts]
    except ValueError:
        raise ValueError(f"--reward-weights {weights!r}: not a comma-separated list of numbers") from None
    if len(values) != len(names):
        raise ValueError(f"--reward-weights has {len(values)} values for {len(names)} reward functions "
                         f"({', '.join(names)}); known rewards: {', '.join(REGISTRY)}")
    return names, values


def build_rewards(names, weights=None, max_completion_length: int = 1024) -> list[RewardSpec]:
    names, values = parse_names_and_weights(names, weights)
    return [RewardSpec(n, REGISTRY[n](max_completion_length), w) if n in REGISTRY
            else RewardSpec(n, import_reward(n), w, takes=None) for n, w in zip(names, values)]


def as_messages(completions: list[str], columns: dict) -> tuple[list, dict]:
    """TRL's conversational arguments: completions and prompts as message lists."""
    from lm.chat import prompt_messages  # here: the rewards import nothing heavy (a plain script's import)
    problems = columns.get("prompts", columns.get("problem", [""] * len(completions)))
    return ([[{"role": "assistant", "content": text}] for text in completions],
            {**columns, "prompts": [prompt_messages(p) for p in problems]})


def _try(fn: Callable, completions: list, columns: dict) -> tuple[list, str | None]:
    """(a finite float or None per completion, the first error). The batch at once, else item by item."""
    n = len(completions)
    try:
        values = list(fn(completions, **columns))
        if len(values) != n:
            raise ValueError(f"returned {len(values)} values for {n} completions")
        first = None
    except Exception as e:
        first = f"{type(e).__name__}: {e}"
        values = []
        for i in range(n):
            try:
                values.append(fn(completions[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})[0])
            except Exception:
                values.append(None)
    ok = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]
    if first is None and n and all(v is None for v in ok):
        first = f"returned {values[0]!r}, not a number"
    return ok, first


def _call(spec: RewardSpec, completions: list, columns: dict) -> list[float]:
    text = (completions, columns)
    values, error = _try(spec.fn, *(as_messages(*text) if spec.takes == "messages" else text))
    failed = bool(completions) and all(v is None for v in values)
    if spec.takes is None and completions:  # a reward of one's own: strings, or TRL's messages?
        if failed:
            tried, _ = _try(spec.fn, *as_messages(*text))
            if any(v is not None for v in tried):
                values, failed, spec.takes = tried, False, "messages"
        if not failed:
            spec.takes = spec.takes or "text"
            say(f"reward {spec.name}: takes " + ("chat messages (TRL's conversational format): completions as "
                "[{'role': 'assistant', 'content': ...}], prompts as message lists" if spec.takes == "messages"
                else "completions as strings"))
    if failed and not spec.warned:
        spec.warned = True
        say(f"warning: reward {spec.name} failed on all {len(completions)} completions of a batch, which "
            f"score 0.0 (first error: {error}); failures are counted in metrics.jsonl as "
            f"reward_events/{spec.name}/failed")
    for v in values:
        if v is None:
            events.count(f"{spec.name}/failed")
    return [0.0 if v is None else v for v in values]


def say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(line, file=sys.stderr, flush=True)


def score(specs: list[RewardSpec], completions: list, columns: dict) -> tuple[dict[str, list[float]], list[float]]:
    """(raw values by reward name, weighted sum per completion). `columns` are keyword arguments of
    every function: the rows' columns, `completion_length`, `completion_ids`; `prompts` (the problems)
    is added."""
    if "problem" in columns and "prompts" not in columns:
        columns = {**columns, "prompts": columns["problem"]}
    per_reward = {spec.name: _call(spec, completions, columns) for spec in specs}
    total = [sum(spec.weight * per_reward[spec.name][i] for spec in specs) for i in range(len(completions))]
    return per_reward, total
