"""Hand-computed reward fixtures; the arithmetic is in the comment beside each expected value."""
import math
import threading

import pytest

from rewards import (accuracy_reward, build_rewards, format_reward, get_cosine_scaled_reward,
                     get_repetition_penalty_reward, get_soft_overlong_reward, language_consistency_reward,
                     reasoning_steps_reward, score, tag_count_reward)
from rewards import events
from rewards.verify import Verifier, extract_answer, is_unevaluated

ALL = build_rewards(["accuracy", "format", "reasoning_steps", "cosine", "repetition_penalty",
                     "language_consistency", "tag_count", "soft_overlong"], max_completion_length=64)


# ---------------------------------------------------------------- accuracy
def test_accuracy_reads_the_answer_tag_in_every_notation():
    gold = ["The answer is $\\boxed{14}$."] * 4 + ["0.5"]
    completions = ["<think>7 * 2</think><answer>14</answer>",   # the tutorial scored this 0
                   "<answer>$14$</answer>",
                   "<answer>\\boxed{14}</answer>",
                   "no tags, so the last box: \\boxed{14}",
                   "<answer>\\frac{1}{2}</answer>"]               # 1/2 = 0.5
    assert accuracy_reward(completions, solution=gold) == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_accuracy_never_takes_a_number_from_the_reasoning():
    gold = ["\\boxed{14}"] * 4
    completions = ["<think>2 + 12 = 14</think><answer>15</answer>",  # right number only in reasoning
                   "<think>so it is 14</think>",                      # no answer at all
                   "I believe the result is 14.",                     # plain text, no tag, no box
                   "<answer>13</answer> then <answer>14</answer>"]    # the last tag counts
    assert accuracy_reward(completions, solution=gold) == [0.0, 0.0, 0.0, 1.0]


def test_the_question_copied_into_the_answer_is_no_answer():
    # A 2-step SFT model's GRPO samples wrote "<answer>9 + 1 + 9 * 6</answer>" for "What is 9 + 1 + 9 * 6?":
    # math-verify evaluates the expression to 64 and called it right.
    events.take()
    gold = ["\\boxed{64}"] * 4
    completions = ["<answer>9 + 1 + 9 * 6</answer>", "<answer>10 + 54</answer>", "\\boxed{8 \\times 8}",
                   "<answer>64</answer>"]
    assert accuracy_reward(completions, solution=gold) == [0.0, 0.0, 0.0, 1.0]
    assert events.take() == {"accuracy/unevaluated": 3}
    for final in ["-5", "\\frac{1}{2}", "x^2+3x+2", "6.02 \\times 10^{23}", "3+2i", "2\\sqrt{3}", "\\frac{1}{2}+1",
                  "1/2", "(1, 2)", "10^{3} - 1"]:
        assert not is_unevaluated(final), final
    for undone in ["12*7", "5 - 3", "4 \\cdot 5", "3.5+1", "2 \u00d7 3"]:
        assert is_unevaluated(undone), undone


def test_the_answer_is_never_read_from_the_reasoning():
    gold = ["42"] * 6
    completions = ["<think> My answer is \\boxed{42} </think> Some other text.",    # box inside closed reasoning
                   "<think> so it is \\boxed{42} and then I ran out of tok",        # cut off mid-reasoning
                   "<think>guess <answer>42</answer></think><answer>41</answer>",    # a tag inside the reasoning
                   "<think>I think <answer>42</answer> but wait",                    # a tag in unclosed reasoning
                   "it is \\boxed{42} </think><answer>41</answer>",                # reasoning opened by the prompt
                   "<think>\\boxed{41}</think> so \\boxed{42}"]                    # a box after the reasoning counts
    assert accuracy_reward(completions, solution=gold) == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert extract_answer("<think>x</think><answer>7</answer><think>y") == "7"


def test_unparsable_gold_gives_half_and_is_counted():
    events.take()
    assert accuracy_reward(["<answer>3</answer>", "no answer"], solution=["no math here at all"] * 2) == [0.5, 0.5]
    assert events.take() == {"accuracy/gold_unparsable": 2}


def test_extract_answer():
    assert extract_answer("<answer> 42 </answer>") == "42"
    assert extract_answer("x \\boxed{\\frac{1}{2}} y \\boxed{3}") == "3"        # the last box
    assert extract_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"             # nested braces
    assert extract_answer("\\boxed{12") is None                                   # unbalanced
    assert extract_answer("42") is None


# ---------------------------------------------------------------- format, tags, steps
def test_format_accepts_only_the_two_blocks():
    completions = [
        "<think>a</think><answer>1</answer>",               # 1.0
        "  <think>a\nb</think>\n\n<answer>1</answer>\n",    # 1.0: whitespace around and between
        "<think>a</think><answer>1</answer>\nP.S. more",    # 0.0: text after </answer> (tutorial let it pass)
        "Sure! <think>a</think><answer>1</answer>",         # 0.0: text before <think>
        "<think>a</think>text<answer>1</answer>",           # 0.0: text between the blocks
        "<think>a</think><answer>1</answer><answer>2</answer>",  # 0.0: two answers
        "<think>a<think>b</think><answer>1</answer>",       # 0.0: a nested tag
        "<answer>1</answer><think>a</think>",               # 0.0: wrong order
        "",                                                 # 0.0
    ]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_tag_count():
    # all four once: 4 x 0.25; "<think>" twice: 3 x 0.25; only <answer></answer>: 2 x 0.25
    assert tag_count_reward(["<think>a</think><answer>1</answer>",
                             "<think><think>a</think><answer>1</answer>",
                             "<answer>1</answer>"]) == [1.0, 0.75, 0.5]


def test_reasoning_steps_tutorial_examples():
    assert reasoning_steps_reward([
        "Step 1: add. Step 2: multiply. Step 3: check.",   # 3 matches -> 1.0
        "First, add. Finally, check.",                      # 2 -> 2/3
        "1. add\n2. check",                                 # ^\d+\. on two lines -> 2/3
        "<think>The answer is 14</think><answer>14</answer>",  # 0 -> 0.0
        "Step 1: a\n- b\n* c\nNext, d",                     # 4 -> min(1, 4/3) = 1.0
    ]) == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0, 1.0], abs=1e-12)


# ---------------------------------------------------------------- cosine
def test_cosine_follows_the_tutorial_code_not_its_table():
    fn = get_cosine_scaled_reward()
    right = "<answer>14</answer>"                  # 19 characters
    wrong = "<answer>15</answer>"
    pad = lambda s, n: s + "x" * (n - len(s))
    out = fn([pad(right, 100), pad(right, 500), pad(right, 1000), pad(right, 3000),
              pad(wrong, 100), pad(wrong, 500), pad(wrong, 1000), pad(wrong, 3000)], solution=["14"] * 8)
    c100 = math.cos(math.pi * 0.1)  # 0.9510565
    assert out == pytest.approx([
        0.8 + 0.1 * (1 + c100),   # 0.99511: short and right
        0.9,                      # cos(pi/2) = 0 -> 0.8 + 0.1
        0.8,                      # cos(pi) = -1
        0.8,                      # past max_len: the end value
        -0.1 - 0.2 * (1 + c100),  # -0.49021: short and wrong (the tutorial's table says -0.12)
        -0.3,
        -0.1,                     # long and wrong is penalised least (the table says -0.5)
        -0.1,
    ], abs=1e-9)


def test_cosine_gives_an_unverifiable_group_no_length_signal():
    # Gold "no math here": accuracy's neutral 0.5. Scored as wrong, the cosine reward would hand out
    # -0.4997 at 19 characters and -0.139 at 800 (longer is better); now 0.0 for every completion.
    events.take()
    fn = get_cosine_scaled_reward()
    out = fn(["<answer>3</answer>", "<answer>3</answer>" + "x" * 780, "no answer"], solution=["no math here at all"] * 3)
    assert out == [0.0, 0.0, 0.0]
    assert events.take() == {"cosine/gold_unparsable": 3}
    assert fn(["<answer>3</answer>"], solution=None) == [0.0]  # no gold column at all


# ---------------------------------------------------------------- repetition
def test_repetition_penalty_with_corrected_counts():
    fn = get_repetition_penalty_reward()
    out = fn(["I think I should think about this problem I think carefully",  # 11 words, 9 trigrams, 9 distinct -> 0
              "The answer is the answer is the answer is 14",                  # 8 trigrams, 4 distinct -> 0.5 * -0.1
              "a a a a a",                                                     # 3 trigrams, 1 distinct -> (2/3) * -0.1
              "two words"])                                                    # fewer than 3 words -> 0
    assert out == pytest.approx([0.0, -0.05, -0.1 * 2 / 3, 0.0], abs=1e-12)


def test_repetition_penalty_counts_characters_in_scripts_without_spaces():
    fn = get_repetition_penalty_reward()
    out = fn(["这个这个这个这个这个",        # 10 characters: 8 trigrams, 2 distinct (这个这, 个这个) -> 0.75 * -0.1
              "我们先加三再乘四",            # 8 distinct characters: 6 trigrams, 6 distinct -> 0
              "ありがとうありがとう",        # 10 kana: 8 trigrams, 5 distinct -> (3/8) * -0.1
              "so 这个 so 这个 so 这个"])    # so,这,个 x3 = 9 words: 7 trigrams, 3 distinct -> (4/7) * -0.1
    assert out == pytest.approx([-0.075, 0.0, -0.1 * 3 / 8, -0.1 * 4 / 7], abs=1e-12)


# ---------------------------------------------------------------- language
def test_language_consistency_share_of_question_script():
    out = language_consistency_reward(
        ["<think>Сначала сложим</think><answer>5</answer>",    # 2 Cyrillic words of 2 -> 1.0
         "<think>Сначала add числа</think><answer>5</answer>",  # 2 Cyrillic of 3 -> 2/3
         "<think>first add</think>",                           # Latin question, Latin words -> 1.0
         "<think>我们先加 then</think>",                        # 4 Han characters + 1 Latin word -> 4/5
         "<think>123 + 456</think>"],                          # no words: nothing mixed in -> 1.0
        problem=["Сколько будет 2+3?", "Сколько будет 2+3?", "What is 2+3?", "二加三是多少?", "What?"])
    assert out == pytest.approx([1.0, 2 / 3, 1.0, 0.8, 1.0], abs=1e-12)


# ---------------------------------------------------------------- soft overlong
def test_soft_overlong_dapo():
    fn = get_soft_overlong_reward(max_length=100, cache_length=20)
    # L <= 80: 0;  L = 90: (80 - 90) / 20 = -0.5;  L = 100: -1.0;  L = 101: -1
    assert fn(["x"] * 4, completion_length=[80, 90, 100, 101]) == [0.0, -0.5, -1.0, -1.0]


# ---------------------------------------------------------------- robustness
def test_every_reward_survives_hostile_inputs():
    nasty = ["", None, 12345, b"bytes", "x" * 1_000_000, "日本語のテキスト<answer>", "\\frac{" * 500,
             "<answer>" + "\\sqrt{" * 200 + "2" + "}" * 200 + "</answer>", [{"content": "<answer>1</answer>"}]]
    columns = {"solution": ["1"] * len(nasty), "problem": ["What is 1?"] * len(nasty)}
    per_reward, total = score(ALL, nasty, columns)
    for name, values in per_reward.items():
        assert len(values) == len(nasty) and all(math.isfinite(v) for v in values), name
    assert per_reward["accuracy"][-1] == 1.0   # TRL's chat layout is read too


def test_verification_time_limit_works_off_the_main_thread():
    verifier = Verifier(timeout=1.0)
    result = {}
    # $(10^(10^10))!$ makes sympy compute for minutes; it must come back as "timeout"
    worker = threading.Thread(target=lambda: result.update(
        out=verifier.check([("\\boxed{14}", "$(10^{10^{10}})!$"), ("\\boxed{14}", "14")])))
    worker.start()
    worker.join(60)
    verifier.close()
    assert result["out"] == ["timeout", "correct"]   # the batch goes on after the slow item


def test_unknown_reward_and_weight_mismatch_fail_with_known_names():
    with pytest.raises(ValueError, match="unknown reward accurcy; known: accuracy, format"):
        build_rewards("accurcy,format")
    with pytest.raises(ValueError, match="2 values for 1 reward functions"):
        build_rewards("accuracy", "1,2")


def test_weighted_sum_and_a_raising_function_scores_zero():
    def flaky(completions, **columns):
        if any("boom" in c for c in completions):
            raise RuntimeError("boom")
        return [1.0] * len(completions)

    specs = build_rewards("format,tag_count", "1,0.5")
    from rewards.registry import RewardSpec
    specs.append(RewardSpec("flaky", flaky, 2.0))
    events.take()
    per, total = score(specs, ["<think>a</think><answer>1</answer>", "boom"], {})
    # first: 1 * 1.0 + 0.5 * 1.0 + 2 * 1.0 = 3.5; second: 0 + 0.5 * 0 + 2 * 0 (raised) = 0
    assert total == [3.5, 0.0]
    assert per["flaky"] == [1.0, 0.0] and events.take() == {"flaky/failed": 1}


def test_answer_formats_for_models_not_trained_on_the_tags():
    from rewards.verify import extract_answer
    cases = {  # text: (r1, boxed, auto)
        "<think>x</think><answer>3</answer> and \\boxed{4}": ("3", "4", "3"),
        "so it is \\boxed{7}.": ("7", "7", "7"),
        "Adding up, the answer is 42.": (None, None, "42"),
        "Final answer: $\\frac{1}{2}$": (None, None, "\\frac{1}{2}"),
        "<think>the answer is 5</think> I give up": (None, None, None),   # never from the reasoning
    }
    for text, expected in cases.items():
        assert tuple(extract_answer(text, f) for f in ("r1", "boxed", "auto")) == expected, text
    assert accuracy_reward(["Adding up, the answer is 42."], solution=["42"], answer_format="auto") == [1.0]
    assert accuracy_reward(["Adding up, the answer is 42."], solution=["42"]) == [0.0]   # training: strict


def test_a_reward_written_for_trls_chat_prompts_runs_unchanged(capsys):
    # open-r1's way of writing a reward (TRL's conversational format): completion[0]["content"],
    # the dataset's columns and TRL's prompts / completion_ids as keyword arguments
    seen = {}

    def ends_with_gold(completions, solution, prompts, completion_ids, **kwargs):
        contents = [completion[0]["content"] for completion in completions]
        seen.update(prompts=prompts, completion_ids=completion_ids)
        return [1.0 if c.endswith(s) else 0.0 for c, s in zip(contents, solution)]

    from rewards.registry import RewardSpec
    from lm.chat import SYSTEM_PROMPT
    spec = RewardSpec("mine:ends_with_gold", ends_with_gold, 1.0, takes=None)
    events.take()
    columns = {"problem": ["1+2", "3+4"], "solution": ["3", "7"], "completion_ids": [[5, 6], [7]]}
    per, total = score([spec], ["so 3", "so 8"], columns)
    assert per["mine:ends_with_gold"] == [1.0, 0.0] and total == [1.0, 0.0] and events.take() == {}
    assert spec.takes == "messages"
    assert seen["prompts"][1] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "3+4"}]
    assert seen["completion_ids"] == [[5, 6], [7]]
    assert "mine:ends_with_gold: takes chat messages" in capsys.readouterr().err
    assert score([spec], ["so 7"], {"problem": ["3+4"], "solution": ["7"], "completion_ids": [[1]]})[1] == [1.0]
    assert capsys.readouterr().err == ""                                     # found out once, said once

    def text_reward(completions, prompts, **kwargs):                         # strings stay strings
        return [float(c.startswith(p)) for c, p in zip(completions, prompts)]
    plain = RewardSpec("mine:text", text_reward, 1.0, takes=None)
    assert score([plain], ["1+2=3", "no"], {"problem": ["1+2", "3+4"]})[0]["mine:text"] == [1.0, 0.0]
    assert plain.takes == "text" and "mine:text: takes completions as strings" in capsys.readouterr().err


def test_a_reward_failing_on_a_whole_batch_says_so_once_with_its_first_error(capsys):
    def broken(completions, **kwargs):
        return [len(c) / undefined_name for c in completions]  # noqa: F821

    from rewards.registry import RewardSpec
    spec = RewardSpec("mine:broken", broken, 1.0, takes=None)
    events.take()
    assert score([spec], ["a", "b", "c"], {"problem": ["x"] * 3})[1] == [0.0, 0.0, 0.0]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reward mine:broken failed on all 3 completions" in err
    assert "NameError: name 'undefined_name' is not defined" in err and "reward_events/mine:broken/failed" in err
    assert events.take() == {"mine:broken/failed": 3}
    score([spec], ["d"], {"problem": ["x"]})
    assert capsys.readouterr().err == "" and events.take() == {"mine:broken/failed": 1}
    nan = RewardSpec("nan", lambda completions, **kw: [float("nan")] * len(completions), 1.0)
    score([nan], ["a"], {})
    err = capsys.readouterr().err
    assert "reward nan failed on all 1 completions" in err and "first error: returned nan, not a number" in err
