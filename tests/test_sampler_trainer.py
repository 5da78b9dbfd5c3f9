"""The trained distribution is the one that sampled: log-probs under top-k / top-p truncation, the
reference scored on the policy's kept set, the sampler/trainer mismatch, and truncated importance
sampling (TIS) in grpo_loss. Expected values by hand."""
import math

import pytest
import torch

from grpo.loss import grpo_loss
from lm import sample, tiny_model, tiny_tokenizer, token_logprobs
from lm.chat import encode_prompt
from lm.draw import draw, kept_logits
from lm.logprobs import chunked_logprobs

LOGITS = [1.0, 0.9, 0.8, 0.7]  # probabilities .2887 .2612 .2363 .2138


def log_softmax_over(token: int, kept: set[int]) -> float:
    return LOGITS[token] - math.log(sum(math.exp(LOGITS[i]) for i in kept))


def identity_head():
    head = torch.nn.Linear(4, 4, bias=False)
    head.weight.data = torch.eye(4)
    return head


@pytest.mark.parametrize("top_k, top_p, kept", [
    (2, 1.0, {0, 1}),          # the two largest
    (0, 0.7, {0, 1, 2}),       # before token 2: .2887 + .2612 = .55 < .7, keep it; before 3: .786 >= .7
    (2, 0.7, {0, 1}),          # top-2 renormalised: .525, .475; before the second: .525 < .7, keep it
    (0, 0.25, {0}),            # the first always stays
])
def test_training_logprob_is_the_log_of_the_probability_the_sampler_used(top_k, top_p, kept):
    logits = torch.tensor([LOGITS] * 4)
    targets = torch.arange(4)
    got, _ = chunked_logprobs(identity_head(), logits, targets, top_k=top_k, top_p=top_p)
    for token in range(4):   # a token outside the kept set is scored in the kept set plus itself
        assert got[token].item() == pytest.approx(log_softmax_over(token, kept | {token}), abs=1e-6), token
    # the sampler's own log-prob of what it drew: the same number (keys chosen to draw several tokens)
    for key in range(40):
        token, logp = draw(torch.tensor([LOGITS]), torch.tensor([key]), 0, 1.0, top_k, top_p)
        assert token.item() in kept
        assert logp.item() == pytest.approx(got[token.item()].item(), abs=1e-6)


def test_full_softmax_when_nothing_is_cut():
    got, _ = chunked_logprobs(identity_head(), torch.tensor([LOGITS] * 4), torch.arange(4), top_k=0, top_p=1.0)
    assert got.tolist() == pytest.approx([log_softmax_over(t, {0, 1, 2, 3}) for t in range(4)], abs=1e-6)


def test_reference_is_scored_on_the_policys_kept_set():
    policy = torch.tensor([LOGITS])                 # top-2 keeps {0, 1}
    reference = torch.tensor([[0.0, 2.0, 3.0, 1.0]])  # its own top-2 would be {1, 2}
    masked = kept_logits(reference, torch.tensor([1]), top_k=2, kept_by=policy)
    logp = masked.log_softmax(-1)[0, 1].item()
    assert logp == pytest.approx(2.0 - math.log(math.exp(0.0) + math.exp(2.0)), abs=1e-6)
    # the sampled token stays in even where the kept set would drop it: finite, never -inf
    masked = kept_logits(reference, torch.tensor([3]), top_k=2, kept_by=policy)
    assert masked.log_softmax(-1)[0, 3].item() == pytest.approx(
        1.0 - math.log(math.exp(0.0) + math.exp(2.0) + math.exp(1.0)), abs=1e-6)


def test_sampler_and_trainer_agree_under_truncation_on_the_same_weights():
    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    prompts = [encode_prompt(tok, q) for q in ("1 + 2 =", "what is 7 * 3?")]
    for top_k, top_p in ((5, 1.0), (0, 0.8), (8, 0.9)):
        s = sample(model, prompts, group_size=3, max_new_tokens=12, temperature=0.9, top_k=top_k, top_p=top_p,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, keys=[11, 12])
        with torch.no_grad():
            logp, _ = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                     temperature=0.9, top_k=top_k, top_p=top_p)
            full, _ = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                     temperature=0.9)
        m = s.completion_mask.bool()
        assert (logp - s.sampler_logp)[m].abs().max().item() < 1e-4, (top_k, top_p)
        assert (full - s.sampler_logp)[m].abs().max().item() > 1e-2   # the full softmax is another distribution


def test_tis_weights_the_policy_gradient_term_by_the_capped_ratio():
    # one completion of two tokens, advantage 1, one update (old = logp): per-token loss -1 before TIS
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    sampler = torch.tensor([[-1.5, -0.5]])       # ratios exp(0.5) = 1.6487, exp(-1.5) = 0.2231
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, sampler_logp=sampler, tis_cap=1.5, loss_type="dapo")
    assert loss.item() == pytest.approx(-(1.5 + math.exp(-1.5)) / 2, abs=1e-6)   # min(1.6487, 1.5) = 1.5
    loss.backward()   # d/dlogp of -w * ratio with ratio = exp(logp - old): -w / 2 per token, w detached
    assert logp.grad[0].tolist() == pytest.approx([-0.75, -math.exp(-1.5) / 2], abs=1e-6)
    plain, _ = grpo_loss(logp, logp.detach(), None, adv, mask, loss_type="dapo")
    assert plain.item() == pytest.approx(-1.0)   # without the new arguments: exactly as before
    with pytest.raises(ValueError, match="tis_cap needs sampler_logp"):
        grpo_loss(logp, logp.detach(), None, adv, mask, tis_cap=2.0)


def test_tis_weights_from_the_trainers_log_probs_without_dropout():
    # the same completion; this forward pass's log-probs carry dropout noise (logp), the trainer's
    # without dropout (tis_logp) equal the sampler's: weights exp(0) = 1, per-token loss -1
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    plain = torch.tensor([[-1.5, -0.5]])
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, sampler_logp=plain, tis_cap=1.5, loss_type="dapo",
                        tis_logp=plain)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)


def test_lora_dropout_stays_out_of_the_sampler_comparison_and_tis(tmp_path):
    # issue 28 item 5: with LoRA dropout the trainer's forward pass is noisy; the sampler/trainer gap
    # and TIS's weights must compare the sampler with the trainer's log-probs without dropout
    import json
    import grpo.train
    from grpo.config import GRPOConfig
    kw = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=8, max_steps=2,
              micro_batch_size=4, learning_rate=1e-2, eval_every=-1, save_every=2,
              reward_funcs="tests.toy_rewards:vowel_share", use_peft=True, lora_r=4, lora_dropout=0.5)
    metrics = {}
    for name, extra in (("plain", {}), ("tis", {"sampler_correction": "tis"})):
        grpo.train.main(GRPOConfig(**kw, **extra, output_dir=str(tmp_path / name)))
        metrics[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    for m in metrics["plain"] + metrics["tis"]:
        assert m["sampler_logp_gap"] < 1e-5, m                    # float32: the same distribution
    for a, b in zip(metrics["plain"], metrics["tis"]):           # so TIS's weights are 1: the same update
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
