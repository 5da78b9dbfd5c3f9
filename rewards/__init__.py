"""Reward functions: `fn(completions: list[str], **columns) -> list[float]`, pure and registered by name.

| name                 | what it rewards                                            | range        |
|----------------------|------------------------------------------------------------|--------------|
| accuracy             | the <answer> equals the gold solution (math-verify)         | 0, 0.5, 1    |
| format               | exactly <think>...</think><answer>...</answer>              | 0 or 1       |
| reasoning_steps      | step markers (Step 1:, First, ...), 3 or more for full      | [0, 1]       |
| cosine               | correctness scaled by length (short right, long wrong)      | [-0.5, 1]    |
| repetition_penalty   | repeated word trigrams                                      | [-0.1, 0]    |
| language_consistency | share of words in the question's script                     | [0, 1]       |
| tag_count            | each of the four tags exactly once, 0.25 each               | [0, 1]       |
| soft_overlong        | DAPO's length punishment near the token budget              | [-1, 0]      |
"""
from rewards.math import accuracy_reward, get_cosine_scaled_reward
from rewards.registry import REGISTRY, TUTORIAL_REWARDS, RewardSpec, build_rewards, parse_names_and_weights, score
from rewards.structure import format_reward, reasoning_steps_reward, tag_count_reward
from rewards.style import (get_repetition_penalty_reward, get_soft_overlong_reward,
                           language_consistency_reward)

__all__ = ["accuracy_reward", "format_reward", "reasoning_steps_reward", "tag_count_reward",
           "language_consistency_reward", "get_cosine_scaled_reward", "get_repetition_penalty_reward",
           "get_soft_overlong_reward", "REGISTRY", "TUTORIAL_REWARDS", "RewardSpec", "build_rewards",
           "parse_names_and_weights", "score"]
