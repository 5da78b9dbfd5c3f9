"""The guard on the GRPO update: two optimizer steps of `run.py grpo`'s loop (grpo/train.py) move the
weights exactly as a plainly written GRPO step does on the same completions.

The plain step is written here from DESIGN.md and grpo/loss.py's docstring, with none of the loop's
speed paths: one transformers forward over [prompt | completion], `log_softmax` of the logits at the
sampling temperature (restricted to the top-k / top-p set, written as a per-position loop), the
group-normalised advantage (r - mean) / (std + 1e-4), the per-token loss
    l = -min(w A, clip(w, 1 - eps, 1 + eps) A) + beta * (exp(ref - logp) - (ref - logp) - 1),
the mean over each completion's tokens and then over completions, one backward over the whole
batch, the gradient norm clipped (to 0.3, so that it binds), and torch's plain (for-loop) AdamW. The loop differs in
every way it is allowed to: micro-batches, shared prompt prefixes, chunked log-probs, completions
with advantage 0 left out, fused AdamW. The completions are captured from the loop itself (its
sampler is tested elsewhere), so both sides train on the same tokens.

Two steps, because at the first step the reference is the policy itself (its KL term and gradient
are 0) and AdamW's first update is lr * sign(g): the second step is where beta and the moments show.
A flipped sign, a lost or double-counted micro-batch, a wrong normaliser, a skipped completion
that carried signal, the reference on the wrong weights or the wrong kept set each move some
weight by about the learning rate (1e-3); float32 rounding moves them by < 1e-5.
"""
import copy
import json

import pytest
import torch

import grpo.train as train
from grpo.config import GRPOConfig
from lm.loading import tiny_model

LR = 1e-3


def plain_kept(logits: torch.Tensor, target: int, top_k: int, top_p: float) -> torch.Tensor:
    """(V,) bool: the tokens a top-k / top-p sampler could draw at one position (and the drawn one)."""
    order = sorted(range(len(logits)), key=lambda v: -logits[v].item())
    if top_k:
        order = order[:top_k]
    probs = torch.softmax(logits[order], -1)
    kept, total = [], 0.0
    for v, p in zip(order, probs.tolist()):
        if total >= top_p:  # the tokens before it already reach top_p
            break
        kept.append(v)
        total += p
    keep = torch.zeros(len(logits), dtype=torch.bool)
    keep[kept + [target]] = True
    return keep


def plain_logp(model, s, temperature, top_k=0, top_p=1.0, kept_by=None):
    """(N, T) log-probs of the completion tokens, and (N, T, V) the kept sets used."""
    P, T = s.prompt_ids.shape[1], s.completion_ids.shape[1]
    ids = torch.cat([s.prompt_ids, s.completion_ids], 1)
    mask = torch.cat([s.prompt_mask, s.completion_mask], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    logits = logits[:, P - 1:P + T - 1].float() / temperature                    # (N, T, V)
    if kept_by is None and (top_k or top_p < 1.0):
        kept_by = torch.stack([torch.stack([plain_kept(logits[i, t].detach(), s.completion_ids[i, t].item(),
                                                       top_k, top_p) for t in range(T)]) for i in range(len(ids))])
    if kept_by is not None:
        logits = logits.masked_fill(~kept_by, float("-inf"))
    logp = logits.log_softmax(-1).gather(-1, s.completion_ids[..., None]).squeeze(-1)
    return logp, kept_by


def plain_grpo_steps(groups, config: GRPOConfig):
    """The plain GRPO update, one optimizer step per captured batch; returns (model, losses, norms)."""
    model = tiny_model()
    model.train()
    ref = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, foreach=False, fused=False)
    losses, norms = [], []
    for g in groups:
        s = g.samples
        r = torch.tensor(g.total, dtype=torch.float64).view(-1, config.group_size)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4))
        adv = torch.where((r == r[:, :1]).all(1, keepdim=True), 0.0, adv).view(-1, 1).float()   # (N, 1)
        logp, kept = plain_logp(model, s, config.temperature, config.top_k, config.top_p)
        w = torch.exp(logp - logp.detach())
        per_token = -torch.min(w * adv, w.clamp(1 - config.epsilon, 1 + config.epsilon) * adv)
        if config.beta > 0:
            with torch.no_grad():
                ref_logp = plain_logp(ref, s, config.temperature, kept_by=kept)[0]
            per_token = per_token + config.beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
        m = s.completion_mask.float()
        loss = ((per_token * m).sum(1) / m.sum(1)).mean()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model, losses, norms


CASES = {  # every setting the update branches on, each value at least once (micro-batches in all)
    "beta0-skip": dict(beta=0.0, skip_zero_advantage=True),
    "beta0-noskip-topk-topp": dict(beta=0.0, skip_zero_advantage=False, top_k=30, top_p=0.9, temperature=0.8),
    "beta0.5": dict(beta=0.5),
    "beta0.5-topk-topp": dict(beta=0.5, top_k=30, top_p=0.9, temperature=0.8),
}


@pytest.mark.parametrize("case", CASES)
def test_two_loop_steps_equal_the_plain_grpo_update(tmp_path, monkeypatch, case):
    # arithmetic:1 with a reward that varies only on subtraction problems: some groups have
    # advantage 0, so skipping them is exercised; micro-batches of 3 split groups of 4
    config = GRPOConfig(model="tiny", dataset="arithmetic:1", group_size=4, prompts_per_step=4,
                        max_completion_length=12, max_steps=2, micro_batch_size=3, learning_rate=LR, max_grad_norm=0.3,
                        eval_every=-1, save_every=2, output_dir=str(tmp_path), seed=3,
                        reward_funcs="tests.toy_rewards:vowel_share_if_minus", reward_weights="1", **CASES[case])
    captured = []

    def recording(*args, **kwargs):
        groups, rounds = sample_step(*args, **kwargs)
        captured.append(copy.deepcopy(groups))
        return groups, rounds

    sample_step = train.sample_step
    monkeypatch.setattr(train, "sample_step", recording)
    monkeypatch.setattr(train, "plot_metrics", lambda *a, **k: None)  # half of each case's time otherwise
    train.main(config)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(captured) == 2
    signal = [g.signal(config.group_size) for g in captured]
    assert any(x.any() for x in signal) and not all(x.all() for x in signal)  # both kinds of group occur

    plain, losses, norms = plain_grpo_steps(captured, config)
    assert [m["loss"] for m in metrics] == pytest.approx(losses, rel=1e-4, abs=1e-7)
    assert [m["grad_norm"] for m in metrics] == pytest.approx(norms, rel=1e-4)
    assert max(norms) > config.max_grad_norm  # the clip binds at least once: the clipped step is what is compared
    if config.beta > 0:
        assert metrics[1]["kl"] > 0  # the second step's reference differs from the policy
    looped = train.load_model(str(tmp_path / "checkpoint-2"))[0].state_dict()
    start = tiny_model().state_dict()
    for name, weight in plain.state_dict().items():
        assert torch.allclose(looped[name], weight, atol=1e-5), (name, (looped[name] - weight).abs().max())
    moved = sum(not torch.allclose(start[k], v, atol=LR / 2) for k, v in plain.state_dict().items())
    assert moved > len(start) // 2  # the comparison is about an update that happened
