"""A reward that varies on a random model's gibberish, so GRPO tests on tiny models get a signal.
Used as --reward-funcs tests.toy_rewards:vowel_share."""


def vowel_share(completions, **columns):
    """Share of characters that are vowels (a, e, i, o, u)."""
    return [sum(ch in "aeiou" for ch in c.lower()) / max(1, len(c)) for c in completions]


def vowel_share_if_minus(completions, problem=None, **columns):
    """vowel_share for subtraction problems, a constant 1.0 otherwise (groups with no signal)."""
    shares = vowel_share(completions)
    return [share if "-" in p else 1.0 for share, p in zip(shares, problem)]


def verified_gold(completions, solution=None, **columns):
    """The accuracy reward of a completion that answers with the gold solution's own value (1.0 when
    the math-verify worker runs in this process's setting; 0.0 and a `failed` count when it breaks)."""
    from rewards import accuracy_reward
    from rewards.verify import last_boxed
    return accuracy_reward([f"<think>a</think><answer>{last_boxed(s) or s}</answer>" for s in solution],
                           solution=solution)


def constant_on_rank_0(completions, **columns):
    """1.0 for every completion on rank 0 (its groups carry no signal), the vowel share elsewhere."""
    from common import dist
    return [1.0] * len(completions) if dist.rank() == 0 else vowel_share(completions)


def vowel_share_chat(completions, prompts, completion_ids, **kwargs):
    """vowel_share written as TRL's conversational examples write rewards: completions as message lists."""
    assert prompts[0][-1]["role"] == "user" and all(isinstance(i, int) for i in completion_ids[0])
    return vowel_share([completion[0]["content"] for completion in completions])
