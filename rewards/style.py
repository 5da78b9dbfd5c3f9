"""Style rewards: `repetition_penalty`, `language_consistency`, `soft_overlong`."""
import unicodedata
from collections import Counter

from rewards.structure import ANSWER_OR_THINK
from rewards.text import as_text, column

# scripts written without spaces between words: each character counts as a word
CHARACTER_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN"}


def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -0.1):
    """(1 - unique / total) * max_penalty over lower-cased n-grams of words; fewer than n words gives 0.

    A word is a whitespace-separated run of text, except in scripts written without spaces (Chinese,
    Japanese, Thai, ...: CHARACTER_SCRIPTS), where each character is a word (see `words_of`).
    "the answer is the answer is the answer is 14": 8 trigrams, 4 distinct -> 0.5 * -0.1 = -0.05.
    "这个这个这个这个这个": 10 characters, 8 trigrams, 2 distinct -> 0.75 * -0.1 = -0.075.
    """
    if max_penalty > 0:
        raise ValueError(f"max_penalty {max_penalty} must be <= 0")

    def repetition_penalty_reward(completions: list, **columns) -> list[float]:
        rewards = []
        for completion in completions:
            words = words_of(as_text(completion, "repetition_penalty").lower())
            if len(words) < ngram_size:
                rewards.append(0.0)
                continue
            ngrams = list(zip(*[words[i:] for i in range(ngram_size)]))
            rewards.append((1 - len(set(ngrams)) / len(ngrams)) * max_penalty)
        return rewards

    return repetition_penalty_reward


def script_of(ch: str) -> str | None:
    """The Unicode script of a letter, from its character name (LATIN, CYRILLIC, CJK, ...)."""
    if not ch.isalpha():
        return None
    try:
        return unicodedata.name(ch).split()[0]
    except ValueError:
        return None


def words_of(text: str) -> list[str]:
    """Whitespace-separated words, with every character of a CHARACTER_SCRIPTS script a word of its
    own: "I said 你好吗" -> ["I", "said", "你", "好", "吗"]."""
    out = []
    for word in text.split():
        current = ""
        for ch in word:
            if script_of(ch) in CHARACTER_SCRIPTS:
                out += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        if current:
            out.append(current)
    return out


def script_words(text: str) -> Counter:
    """How many words of each script: runs of letters of one script, one word per character for
    scripts written without spaces."""
    counts, current, length = Counter(), None, 0
    for ch in text + " ":
        script = script_of(ch)
        if script != current and current is not None:
            counts[current] += length if current in CHARACTER_SCRIPTS else 1
        if script != current:
            current, length = script, 0
        length += 1
    counts.pop(None, None)
    return counts


def language_consistency_reward(completions: list, problem: list | None = None, **columns) -> list[float]:
    """Share of the words in the reasoning and the answer that are in the question's script.

    The R1 paper's language-consistency reward ("proportion of target-language words in the CoT"),
    with the language approximated by its Unicode script. The target is the question's most common
    script (the `problem` or `prompt` column); without a question, the completion's own most common
    script. Text inside <think>/<answer> is scored when present, else the whole completion. Digits
    and symbols are not words. 1.0 when every word is in the target script, and when there are no
    words at all (pure math such as `2+3=5` mixes no language; scoring it 0 would reward verbosity).
    """
    questions = column({"problem": problem or columns.get("prompt")}, "problem", len(completions))
    rewards = []
    for completion, question in zip(completions, questions):
        text = as_text(completion, "language_consistency")
        inside = ANSWER_OR_THINK.findall(text)
        words = script_words(" ".join(inside) if inside else text)
        total = sum(words.values())
        if total == 0:
            rewards.append(1.0)
            continue
        target_counts = script_words(question) if isinstance(question, str) else Counter()
        target = (target_counts or words).most_common(1)[0][0]
        rewards.append(words[target] / total)
    return rewards


def get_soft_overlong_reward(max_length: int = 1024, cache_length: int = 256):
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), on the length L in tokens:
        0                                       if L <= max_length - cache_length
        (max_length - cache_length - L) / cache_length   inside the last cache_length tokens
        -1                                      if L > max_length
    L is the `completion_length` column (tokens) that the GRPO loop passes; without it, the number
    of whitespace-separated words.
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"soft_overlong needs 0 < cache_length ({cache_length}) <= max_length ({max_length})")

    def soft_overlong_reward(completions: list, completion_length: list | None = None, **columns) -> list[float]:
        lengths = column({"n": completion_length}, "n", len(completions))
        rewards = []
        for completion, length in zip(completions, lengths):
            n = length if isinstance(length, int) else len(as_text(completion, "soft_overlong").split())
            if n <= max_length - cache_length:
                rewards.append(0.0)
            elif n <= max_length:
                rewards.append((max_length - cache_length - n) / cache_length)
            else:
                rewards.append(-1.0)
        return rewards

    return soft_overlong_reward
