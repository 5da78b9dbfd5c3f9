import json
import re

import pytest

from tasks import DataError, arithmetic_rows, load_conversations, load_math


def test_arithmetic_answers_match_python_evaluation():
    rows = arithmetic_rows("train", 300, seed=7, levels=(1, 2, 3, 4, 5))
    for row in rows:
        expression = row["problem"].removeprefix("What is ").removesuffix("?")
        assert eval(expression) == row["answer"], row["problem"]  # Python's own precedence
        assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}$.")
    assert {r["level"] for r in rows} == {1, 2, 3, 4, 5}


def test_levels_have_their_shape():
    by_level = {lv: arithmetic_rows("train", 30, seed=1, levels=(lv,)) for lv in (1, 2, 3, 4, 5)}
    operands = lambda p: len(re.findall(r"\d+", p))
    assert all(operands(r["problem"]) == 2 and "*" not in r["problem"] for r in by_level[1])
    assert all(operands(r["problem"]) == 3 and "(" not in r["problem"] for r in by_level[3])
    assert all(operands(r["problem"]) == 4 and "(" in r["problem"] for r in by_level[4])
    assert all(operands(r["problem"]) == 5 for r in by_level[5])


def test_operands_override_keeps_the_level_rules_and_the_levels_own_problems():
    rows = load_math("arithmetic:3x4", "test", 40)
    for row in rows:                     # "What is 11 * 9 - 16 + 20?": 4 operands, 2+ kinds of op, no brackets
        expression = row["problem"].removeprefix("What is ").removesuffix("?")
        assert len(re.findall(r"\d+", expression)) == 4 and "(" not in expression
        assert len(set(re.findall(r"[-+*]", expression))) >= 2
        assert eval(expression) == row["answer"]
        assert row["worked"].count("Step ") == 3          # one step per operation
    assert all(len(re.findall(r"\d+", r["problem"])) == 5 for r in load_math("arithmetic:1-2x5", limit=10))
    # the plain spec still gives the very same problems as before the override existed
    assert load_math("arithmetic:3", "test", 20) == arithmetic_rows("test", 20, levels=(3,))
    with pytest.raises(DataError, match="xK for K operands"):
        load_math("arithmetic:3xfour")
    with pytest.raises(ValueError, match="operands 1: choose 2..8"):
        load_math("arithmetic:3x1")


def test_a_mix_takes_its_parts_in_turn():
    mix = load_math("arithmetic:3+3x4", "train", 7)
    level3, four = arithmetic_rows("train", 4, levels=(3,)), load_math("arithmetic:3x4", "train", 4)
    assert [{k: v for k, v in r.items() if k != "source"} for r in mix] == \
        [level3[0], four[0], level3[1], four[1], level3[2], four[2], level3[3]]
    assert [r["source"] for r in mix[:3]] == ["arithmetic:3", "arithmetic:3x4", "arithmetic:3"]  # the curriculum's kinds
    assert [len(re.findall(r"\d+", r["problem"])) for r in mix] == [3, 4, 3, 4, 3, 4, 3]
    conversations = load_conversations("arithmetic:1+2", "train", 2)
    assert [c["problem"] for c in conversations] == [r["problem"] for r in load_math("arithmetic:1+2", "train", 2)]
    with pytest.raises(DataError, match="xK for K operands"):
        load_math("arithmetic:3+3xfour")


def test_train_and_test_never_share_a_problem_and_are_reproducible():
    train = {r["problem"] for r in arithmetic_rows("train", 2000, seed=0)}
    test = {r["problem"] for r in arithmetic_rows("test", 300, seed=5)}
    assert len(train) == 2000 and len(test) == 300
    assert not train & test
    assert arithmetic_rows("test", 50, seed=3) == arithmetic_rows("test", 50, seed=3)


def test_worked_solution_steps_are_exact_and_follow_order_of_operations():
    rows = arithmetic_rows("train", 200, seed=2, levels=(3, 4, 5))
    for row in rows:
        think, answer = re.fullmatch(r"<think>\n(.*)\n</think>\n<answer>(-?\d+)</answer>",
                                     row["worked"], re.S).groups()
        assert int(answer) == row["answer"]
        steps = re.findall(r"Step (\d+): (\(?-?\d+\)?) ([-+*]) (\(?-?\d+\)?) = (-?\d+)(?:, so the expression becomes (.*))?\.", think)
        assert [int(s[0]) for s in steps] == list(range(1, len(steps) + 1))
        for _, a, op, b, value, rest in steps:
            assert eval(f"{a} {op} {b}") == int(value)
            if rest:
                assert eval(rest) == row["answer"]  # each rewritten expression keeps the value
        assert int(steps[-1][4]) == row["answer"]


def test_worked_solution_by_hand():
    from tasks.arithmetic import Num, Op, worked_solution
    # 2 + 3 * 4: the product first (12), then the sum (14)
    text = worked_solution(Op("+", Num(2), Op("*", Num(3), Num(4))))
    assert text == ("<think>\nWe need to evaluate 2 + 3 * 4.\n"
                    "Step 1: 3 * 4 = 12, so the expression becomes 2 + 12.\n"
                    "Step 2: 2 + 12 = 14.\n</think>\n<answer>14</answer>")


def test_local_file_errors_name_file_row_and_column(tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n"
                    + json.dumps({"problem": "2+2", "solution": ""}) + "\n")
    with pytest.raises(DataError, match=r"math.jsonl row 1: column 'solution' is missing or empty"):
        load_math(str(path))
    with pytest.raises(DataError, match="does not exist"):
        load_math(str(tmp_path / "nope.jsonl"))
    path.write_text('{"problem": "1+1", "solution": "2"}\n{oops\n')
    with pytest.raises(DataError, match="math.jsonl line 2: not valid JSON"):
        load_math(str(path))


def test_conversation_layouts(tmp_path):
    rows = [{"system": "S", "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]},
            {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
            {"prompt": "Q3", "completion": "A3"}]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(rows))
    loaded = load_conversations(str(path))
    assert [m["role"] for m in loaded[0]["messages"]] == ["system", "user", "assistant"]
    assert loaded[1]["messages"][-1]["content"] == "A2"
    assert loaded[2]["messages"][1] == {"role": "user", "content": "Q3"}
    builtin = load_conversations("arithmetic", limit=3)
    assert builtin[0]["messages"][-1]["content"].startswith("<think>")
    path.write_text(json.dumps([{"prompt": "Q", "completion": ""}]))
    with pytest.raises(DataError, match="row 0"):
        load_conversations(str(path))


def test_the_standard_math_sets_take_their_gold_from_the_right_column(tmp_path):
    from rewards import accuracy_reward
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps({"question": "Tom has 3 apples and buys 1,204 more. How many?",
                                 "answer": "3 + 1204 = <<3+1204=1207>>1207\n#### 1,207"}) + "\n")
    math500 = tmp_path / "math500.jsonl"
    math500.write_text(json.dumps({"problem": "Simplify 14/3.", "solution": "It is \\boxed{\\frac{14}{3}}, done.",
                                   "answer": "\\frac{14}{3}", "level": 2}) + "\n")
    aime = tmp_path / "aime.json"
    aime.write_text(json.dumps([{"problem": "Find N.", "answer": 204}]))
    rows = [load_math(str(p))[0] for p in (gsm8k, math500, aime)]
    assert [r["solution"] for r in rows] == ["1207", "\\boxed{\\frac{14}{3}}", "204"]
    assert rows[0]["problem"].startswith("Tom has") and rows[1]["level"] == 2   # other columns kept
    right = ["<think>add</think><answer>1207</answer>", "<think>x</think><answer>14/3</answer>",
             "<think>y</think><answer>204</answer>"]
    assert accuracy_reward(right, solution=[r["solution"] for r in rows]) == [1.0, 1.0, 1.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl row 0: GSM8K-style row without '#### <answer>'"):
        load_math(str(bad))


def test_a_problem_file_without_splits_holds_a_fixed_tenth_out_that_training_never_sees(tmp_path, capsys):
    import tasks.loaders
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}+1", "solution": str(i + 1)}) + "\n" for i in range(50)))
    train, test, every = (load_math(str(path), split) for split in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (45, 5, 50)
    assert {r["problem"] for r in train} | {r["problem"] for r in test} == {r["problem"] for r in every}
    assert not {r["problem"] for r in train} & {r["problem"] for r in test}
    assert load_math(str(path), "test", seed=7) == test and load_math(str(path), "train", limit=3) == train[:3]
    assert "math.jsonl has no splits: split test is 5 of its 50 rows" in capsys.readouterr().err
    for spec in (str(path), str(tmp_path / "math.json"), str(tmp_path / "math.parquet")):
        if spec.endswith(".json"):
            (tmp_path / "math.json").write_text(json.dumps(every))
        elif spec.endswith(".parquet"):
            import pandas as pd
            pd.DataFrame(every).to_parquet(spec)
        assert load_math(spec, "test") == test
        with pytest.raises(DataError, match=r"has no split 'no_such_split': a file without splits has train"):
            load_math(spec, "no_such_split")
    (tmp_path / "split.json").write_text(json.dumps({"train": every[:40], "test": every[40:]}))
    assert load_math(str(tmp_path / "split.json"), "test") == every[40:]    # a file with splits keeps them
    with pytest.raises(DataError, match=r"split.json has no split 'validation'; its splits: train, test"):
        load_math(str(tmp_path / "split.json"), "validation")
    path.write_text(json.dumps({"problem": "1+1", "solution": "2"}) + "\n")
    assert len(load_math(str(path))) == 1                                    # too few to hold out: all train
    with pytest.raises(DataError, match=r"1 rows are too few to hold a tenth out for split test; --split all"):
        load_math(str(path), "test")
    tasks.loaders._said.clear()
