import json
import subprocess
import sys

from conftest import ROOT
from evaluation import paired, pass_at_k, wilson
from recipe.sample import best_completions
from tasks import load_conversations


def test_best_completion_per_prompt_with_threshold():
    records = [
        {"problem": "a", "solution": "1", "completions": ["x", "yy", "z"], "score": [0.5, 1.5, 1.5], "lengths": [1, 2, 1]},
        {"problem": "b", "solution": "2", "completions": ["p", "q"], "score": [0.2, 0.9], "lengths": [1, 1]},
        {"problem": "c", "solution": "3", "completions": [" ", "w"], "score": [2.0, 1.2], "lengths": [0, 1]},
    ]
    kept = best_completions(records, min_score=1.0)
    # prompt a: 1.5 twice, the shorter ("z") wins; prompt b: best 0.9 < 1.0, nothing kept; prompt c: the
    # empty completion (EOS first) scored best but is no answer, so "w"
    assert [(k["problem"], k["completion"], k["score"]) for k in kept] == [("a", "z", 1.5), ("c", "w", 1.2)]


def test_pass_at_k_and_wilson_by_hand():
    # n = 4 samples, c = 1 correct: pass@1 = 1 - C(3,1)/C(4,1) = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 1) == 0.25 and pass_at_k(4, 1, 2) == 0.5 and pass_at_k(4, 0, 4) == 0.0
    # Wilson, p = 0.5, n = 100: centre 0.5, half = 1.96 sqrt(0.0025 + 0.000096) / 1.038416 = 0.096170
    low, high = wilson(0.5, 100)
    assert abs(low - 0.403830) < 1e-5 and abs(high - 0.596170) < 1e-5


def test_paired_comparison_by_hand():
    # d = other - first = [0, 1, 1, -1, 0]: mean 0.2; squared deviations .04 .64 .64 1.44 .04 sum to 2.8,
    # sd = sqrt(2.8 / 4) = 0.836660, half-width 1.96 * 0.836660 / sqrt(5) = 0.733365.
    # 2 gained, 1 lost: p = 2 * P(X <= 1 | n = 3) = 2 * (1 + 3) / 8 = 1.0
    c = paired([1, 0, 0, 1, 0], [1, 1, 1, 0, 0])
    assert abs(c["diff"] - 0.2) < 1e-12 and c["gained"] == 2 and c["lost"] == 1 and c["p_sign_test"] == 1.0
    assert abs(c["diff_ci95"][0] - (0.2 - 0.733365)) < 1e-6 and abs(c["diff_ci95"][1] - (0.2 + 0.733365)) < 1e-6
    # 6 gained, 0 lost, 2 ties: p = 2 * P(X = 0 | n = 6) = 2 / 64
    c = paired([0] * 6 + [1, 0], [1] * 6 + [1, 0])
    assert c["gained"] == 6 and c["lost"] == 0 and c["p_sign_test"] == 2 / 64
    # fractions (several samples per problem) count by sign; a model against itself: no difference, p 1
    assert paired([0.25, 0.5], [0.5, 0.5])["gained"] == 1 and paired([0.3, 0.7], [0.3, 0.7])["p_sign_test"] == 1.0


def test_run_py_sample_keeps_sft_ready_pairs(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "sample", "--model", "tiny", "--num-prompts", "3",
                           "--num-samples", "2", "--max-new-tokens", "6", "--keep", "best", "--min-score", "0",
                           "--reward-funcs", "tests.toy_rewards:vowel_share", "--output-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 of 3 prompts kept an answer" in proc.stdout
    records = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["completions"]) == 2 for r in records)
    conversations = load_conversations(str(tmp_path / "kept.jsonl"))   # what run.py sft reads
    assert [m["role"] for m in conversations[0]["messages"]] == ["system", "user", "assistant"]
