"""Structure rewards: `format`, `tag_count`, `reasoning_steps`."""
import re

from rewards.text import as_text

# exactly one <think>...</think>, optional whitespace, exactly one <answer>...</answer>, nothing else;
# neither block may contain another of the four tags
_NO_TAG = r"(?:(?!</?(?:think|answer)>).)*"
FORMAT = re.compile(rf"<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>", re.S)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
ANSWER_OR_THINK = re.compile(r"<(?:think|answer)>(.*?)</(?:think|answer)>", re.S)
STEPS = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)", re.M)


def format_reward(completions: list, **columns) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly
    `<think>...</think>` then `<answer>...</answer>` with only whitespace between and nothing
    outside; else 0.0. (The tutorial's `re.MULTILINE` + `$` let text after a newline slip through.)"""
    return [1.0 if FORMAT.fullmatch(as_text(c, "format").strip()) else 0.0 for c in completions]


def tag_count_reward(completions: list, **columns) -> list[float]:
    """0.25 for each of <think>, </think>, <answer>, </answer> that occurs exactly once."""
    texts = [as_text(c, "tag_count") for c in completions]
    return [0.25 * sum(text.count(tag) == 1 for tag in TAGS) for text in texts]


def reasoning_steps_reward(completions: list, **columns) -> list[float]:
    """min(1, k / 3), k = matches of `Step N:`, a line starting `N.`, `\\n-`, `\\n*`, `First,`,
    `Second,`, `Next,`, `Finally,` (the tutorial's pattern)."""
    return [min(1.0, len(STEPS.findall(as_text(c, "reasoning_steps"))) / 3) for c in completions]
