"""A reward that varies on a random model's gibberish, so GRPO tests on tiny models get a signal.
Used as --reward-funcs tests.toy_rewards:vowel_share."""


def vowel_share(completions, **columns):
    """Share of characters that are vowels (a, e, i, o, u)."""
    return [sum(ch in "aeiou" for ch in c.lower()) / max(1, len(c)) for c in completions]
