"""Dynamic sampling (DAPO) and the pass-rate curriculum: by hand on made-up groups, then in the loop."""
import json
import math

import pytest
import torch

import grpo.train as train
from grpo.batch import Groups, fill_with_signal, round_stats
from grpo.config import GRPOConfig
from grpo.curriculum import PRIOR, UNIFORM, PassRateCurriculum
from lm.sampling import Samples

G = 2


def groups_with(rewards: list[list[float]], tag: str) -> Groups:
    """Groups of G completions with the given rewards; completion j of group g has length g + 1."""
    n = len(rewards) * G
    lengths = [g + 1 for g in range(len(rewards)) for _ in range(G)]
    T = max(lengths)
    mask = torch.tensor([[1] * k + [0] * (T - k) for k in lengths])
    s = Samples(prompt_ids=torch.ones(n, 3, dtype=torch.long), prompt_mask=torch.ones(n, 3, dtype=torch.long),
                completion_ids=mask.clone(), completion_mask=mask, truncated=torch.zeros(n, dtype=torch.bool),
                sampler_logp=-mask.float())
    return Groups([{"problem": f"{tag}{g}"} for g in range(len(rewards))], s, [f"{tag}{i}" for i in range(n)],
                  {"r": [x for r in rewards for x in r]}, [x for r in rewards for x in r])


def test_dynamic_sampling_keeps_the_first_b_groups_with_signal():
    rounds = [groups_with([[1, 1], [0, 1], [0, 0]], "a"),      # one group with signal (a1)
              groups_with([[0, 0], [1, 0], [0.5, 0.2], [0, 1]], "b"),  # three: one more than the 2 still needed
              groups_with([[1, 0], [1, 0], [1, 0]], "c")]      # never sampled: the batch is full
    batch, stats = fill_with_signal(lambda r: rounds[r], B=3, max_rounds=5, G=G, pad_id=0)
    assert [p["problem"] for p in batch.prompts] == ["a1", "b1", "b2"]
    assert stats == {"sampling_rounds": 2, "signal_groups": 4, "dropped_groups": 3}   # b3 left over, not dropped
    assert batch.total == [0, 1, 1, 0, 0.5, 0.2] and batch.texts == ["a2", "a3", "b2", "b3", "b4", "b5"]
    # rows of different rounds padded to one width (round b's, 4): a1's completions have 2 tokens, b2's 3
    assert batch.samples.completion_mask.tolist() == [[1, 1, 0, 0]] * 4 + [[1, 1, 1, 0]] * 2
    assert batch.samples.sampler_logp[0].tolist() == [-1, -1, 0, 0]


def test_dynamic_sampling_stops_at_the_cap_and_trains_what_it_has():
    rounds = [groups_with([[1, 1], [0, 1]], "a"), groups_with([[0, 0], [1, 1]], "b")]
    batch, stats = fill_with_signal(lambda r: rounds[r], B=2, max_rounds=1, G=G, pad_id=0)
    assert [p["problem"] for p in batch.prompts] == ["a1"] and stats["sampling_rounds"] == 2
    nothing = [groups_with([[1, 1]], "a"), groups_with([[0, 0]], "b")]
    batch, stats = fill_with_signal(lambda r: nothing[r], B=1, max_rounds=1, G=G, pad_id=0)
    assert [p["problem"] for p in batch.prompts] == ["b0"]     # none anywhere: the last round, update 0
    assert stats == {"sampling_rounds": 2, "signal_groups": 0, "dropped_groups": 1}  # a0 dropped, b0 trained
    assert round_stats(groups_with([[1, 1], [0, 1], [2, 3]], "x"), G)["signal_groups"] == 2


def test_signal_is_decided_on_the_float32_rewards_the_advantages_use():
    # 0.1 + 0.2 = 0.30000000000000004 and 0.3 differ in float64, not in float32: advantages 0, no signal
    same = groups_with([[0.1 + 0.2, 0.3], [0.3, 0.3 + 1e-6]], "f")
    assert same.signal(G).tolist() == [False, True]
    batch, stats = fill_with_signal(lambda r: same, B=2, max_rounds=0, G=G, pad_id=0)
    assert [p["problem"] for p in batch.prompts] == ["f1"] and stats["signal_groups"] == 1


def test_pass_rate_curriculum_by_hand():
    rows = [{"problem": "p0", "level": 1}, {"problem": "p1", "level": 1}, {"problem": "p2", "level": 2}]
    c = PassRateCurriculum(rows, group_size=4, seed=0)
    c.update([("p0", 4, 4), ("p0", 2, 4), ("p2", 1, 4)])
    # level 1: 6 passes in 8 -> prior (6 + 1) / (8 + 2) = 0.7; level 2: 1 in 4 -> 2 / 6
    expected = [(6 + PRIOR * 0.7) / (8 + PRIOR), (0 + PRIOR * 0.7) / (0 + PRIOR), (1 + PRIOR * 2 / 6) / (4 + PRIOR)]
    assert c.pass_rates().tolist() == pytest.approx(expected)
    informative = [1 - p ** 4 - (1 - p) ** 4 for p in expected]
    weights = [(1 - UNIFORM) * u / sum(informative) + UNIFORM / 3 for u in informative]
    assert c.weights().tolist() == pytest.approx(weights) and math.isclose(sum(weights), 1.0)
    # the same slot draws the same prompts, from a saved and restored state too
    again = PassRateCurriculum(rows, group_size=4, seed=0)
    again.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert [r["problem"] for r in again.draw(5, 2)] == [r["problem"] for r in c.draw(5, 2)]
    assert len({r["problem"] for r in c.draw(7, 3)}) == 3          # without replacement


def test_curriculum_prefers_prompts_near_one_half():
    rows = [{"problem": f"p{i}", "level": 1} for i in range(3)]
    c = PassRateCurriculum(rows, group_size=8, seed=1)
    c.update([("p0", 0, 80), ("p1", 40, 80), ("p2", 80, 80)])   # never, half the time, always
    # prior 121/242 = 0.5; p0 = (0 + 1) / 82, informative 1 - (81/82)^8 = 0.0935 (p2 the same); p1 = 41/82 = 0.5,
    # informative 1 - 2 / 2^8 = 0.9922; weights 0.9 * u / 1.1792 + 0.1 / 3
    assert c.weights().tolist() == pytest.approx([0.1047, 0.7906, 0.1047], abs=2e-4)
    drawn = [c.draw(slot, 1)[0]["problem"] for slot in range(200)]
    assert drawn.count("p1") > 140


SIGNAL = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=10, max_steps=3,
              micro_batch_size=4, learning_rate=1e-3, eval_every=-1, save_every=1, dataset="arithmetic:1",
              reward_funcs="tests.toy_rewards:vowel_share_if_minus", reward_weights="")


def test_the_loop_with_dynamic_sampling_trains_only_groups_with_signal_and_resumes(tmp_path):
    full = GRPOConfig(**SIGNAL, dynamic_sampling=True, max_sampling_rounds=4, output_dir=str(tmp_path / "full"))
    train.main(full)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["dropped_groups"] for m in metrics) > 0               # a + b problems: constant reward
    for m in metrics:
        assert m["reward_std"] > 0 and m["trained_frac"] > 0.5         # every kept group has signal
        sampled = 2 * m["sampling_rounds"]                              # B = 2 prompts a round
        assert m["dropped_groups"] == round(sampled * (1 - m["signal_frac"]))
        assert m["sampling_rounds"] == 5 or m["signal_frac"] * sampled >= 2   # full, or the cap reached
    state = torch.load(tmp_path / "full" / "checkpoint-2" / "training_state.pt", weights_only=False)
    assert state["data_position"] == 2 * sum(m["sampling_rounds"] for m in metrics[:2])   # B slots a round
    resumed = GRPOConfig(**SIGNAL, dynamic_sampling=True, max_sampling_rounds=4, output_dir="x",
                         resume=str(tmp_path / "full" / "checkpoint-2"))
    assert train.main(resumed)["reward"] == pytest.approx(metrics[-1]["reward"], rel=1e-6)


def test_the_loop_with_the_curriculum_saves_its_counts(tmp_path):
    config = GRPOConfig(**{**SIGNAL, "reward_funcs": "accuracy,tests.toy_rewards:vowel_share", "reward_weights": "0,1"},
                        curriculum="pass-rate", output_dir=str(tmp_path))
    train.main(config)
    state = torch.load(tmp_path / "checkpoint-3" / "training_state.pt", weights_only=False)
    counts = state["curriculum"]["counts"]
    assert sum(n for _, n in counts.values()) == 3 * 2 * 4             # every completion of 3 steps counted
    with pytest.raises(ValueError, match="needs the accuracy reward|from the accuracy reward"):
        GRPOConfig(**SIGNAL, curriculum="pass-rate")
