"""Cold-start SFT data, the tutorial's three ways plus the built-in worked solutions.

- `worked`:   the built-in task's worked R1-format solutions (exact, no model needed).
- `few_shot`: prompt a model with a few long worked examples, then the problem.
- `direct`:   prompt a model to show its reasoning step by step and verify it.
- `refine`:   take a model's raw outputs (e.g. the R1-Zero GRPO model's) and rewrite them into the
              clean `<think>...</think><answer>...</answer>` format: the reasoning is what came
              before the answer, the answer is the extracted final answer.
Every method keeps only completions that pass the format and accuracy rewards, and counts what it
dropped and why. Output rows are prompt/completion pairs that `run.py sft` reads.
"""
import json
from collections import Counter
from pathlib import Path

from evaluation import generate_and_score
from lm.chat import SYSTEM_PROMPT
from rewards import accuracy_reward, build_rewards, format_reward
from rewards.verify import ANSWER_TAG, extract_answer
from tasks import arithmetic_rows

DIRECT_INSTRUCTION = ("Solve the problem. Show your reasoning step by step inside <think> </think>, verify "
                      "the result, then give only the final number inside <answer> </answer>.\n\nProblem: ")


def sft_pair(problem: str, completion: str, solution: str, method: str) -> dict:
    return {"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem}],
            "completion": completion.strip(), "problem": problem, "solution": solution, "method": method}


def verdict(completion: str, solution: str) -> str:
    """'kept', or why not: 'bad_format', 'wrong_answer'."""
    if format_reward([completion])[0] != 1.0:
        return "bad_format"
    if accuracy_reward([completion], solution=[solution])[0] != 1.0:
        return "wrong_answer"
    return "kept"


def refine(raw: str) -> str | None:
    """A raw output rewritten as <think>reasoning</think><answer>answer</answer>, or None without an answer."""
    answer = extract_answer(raw)
    if answer is None:
        return None
    cut = min([i for i in (raw.find("<answer>"), raw.rfind("\\boxed{")) if i >= 0], default=len(raw))
    reasoning = ANSWER_TAG.sub("", raw[:cut]).replace("<think>", "").replace("</think>", "").strip()
    answer = answer.strip().strip("$").strip()
    if answer.startswith("\\boxed{") and answer.endswith("}"):
        answer = answer[len("\\boxed{"):-1]
    return f"<think>\n{reasoning or 'The computation is direct.'}\n</think>\n<answer>{answer}</answer>"


def few_shot_prompt(problem: str, shots: list[dict]) -> str:
    examples = "\n\n".join(f"Problem: {s['problem']}\nSolution:\n{s['worked']}" for s in shots)
    return f"Here are solved examples.\n\n{examples}\n\nNow solve this one the same way.\nProblem: {problem}"


def make_cold_start(method: str, rows: list[dict], *, model=None, tokenizer=None, num_samples: int = 2,
                    max_new_tokens: int = 256, raw_outputs: list[dict] | None = None, seed: int = 0):
    """(SFT pairs, Counter of kept/dropped reasons) for one method."""
    counts, pairs = Counter(), []
    if method == "worked":
        for row in rows:
            pairs.append(sft_pair(row["problem"], row["worked"], row["solution"], method))
        counts["kept"] = len(pairs)
        return pairs, counts
    if method == "refine":
        for record in raw_outputs or []:
            for raw in record["completions"]:
                cleaned = refine(raw)
                why = "no_answer" if cleaned is None else verdict(cleaned, record["solution"])
                counts[why] += 1
                if why == "kept":
                    pairs.append(sft_pair(record["problem"], cleaned, record["solution"], method))
                    break
        return pairs, counts
    if method not in ("few_shot", "direct"):
        raise ValueError(f"cold-start method {method!r}: choose worked, few_shot, direct or refine")
    shots = arithmetic_rows("train", 2, seed=seed + 99, levels=(3, 4))
    asked = [{**row, "problem": few_shot_prompt(row["problem"], shots) if method == "few_shot"
              else DIRECT_INSTRUCTION + row["problem"]} for row in rows]
    records = generate_and_score(model, tokenizer, asked, build_rewards("format"), samples_per_problem=num_samples,
                                 temperature=0.8, max_new_tokens=max_new_tokens, seed=seed, desc=method)
    for row, record in zip(rows, records):
        for completion in record["completions"]:
            why = verdict(completion, row["solution"])
            counts[why] += 1
            if why == "kept":  # trained under the plain R1 prompt, not the prompt that produced it
                pairs.append(sft_pair(row["problem"], completion, row["solution"], method))
                break
    return pairs, counts


def write_pairs(path: str | Path, pairs: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(p) + "\n" for p in pairs))
