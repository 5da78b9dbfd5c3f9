"""Mixed precision: float32 master weights and optimizer state, bfloat16 compute (autocast).

Pure bfloat16 weights rounded to nearest would lose every AdamW update smaller than ~1/256 of a
weight: at lr 5e-6 on weights of size ~0.02, nearly all of them (an Adam step's first update is ~lr
per weight). They are updated with stochastic rounding instead (tests/test_optim_modes.py): after one
step a few percent of the weights move, each by a whole bfloat16 step, the right amount in expectation.
On a CPU autocast to bfloat16 works too, so the GPU default (`bf16-mixed`) is tested here.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM

import grpo.train as grpo_train
import sft.train as sft_train
from grpo.config import GRPOConfig
from common.runlog import read_jsonl
from lm.loading import tiny_model, tiny_tokenizer
from lm.logprobs import target_nll, token_logprobs
from lm.precision import Precision, resolve_precision
from lm.sampling import sample
from sft.train import SFTConfig


def changed_share(path) -> float:
    """Share of the entries of the 2-D weights that differ from the starting tiny model (stored in the
    checkpoint's dtype: a bfloat16 run starts from the rounded weights)."""
    trained, start = AutoModelForCausalLM.from_pretrained(path).state_dict(), tiny_model().state_dict()
    keys = [k for k in trained if trained[k].dim() == 2]
    changed = sum((trained[k] != start[k].to(trained[k].dtype)).sum().item() for k in keys)
    return changed / sum(trained[k].numel() for k in keys)


def test_auto_means_mixed_for_training_on_a_gpu_and_float32_on_a_cpu(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == Precision(torch.float32, torch.bfloat16, "cuda")
    assert resolve_precision("auto", cuda, training=False) == Precision(torch.bfloat16, torch.bfloat16, "cuda")
    assert resolve_precision("auto", cpu) == Precision(torch.float32, torch.float32, "cpu")
    assert resolve_precision("bfloat16", cuda).weights == torch.bfloat16           # pure, by flag only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)   # T4, V100
    assert resolve_precision("auto", cuda) == Precision(torch.float32, torch.float32, "cuda")
    with pytest.raises(ValueError, match="--dtype 'half'"):
        resolve_precision("half", cpu)


@pytest.mark.parametrize("dtype, low, high", [("bf16-mixed", 0.99, 1.0), ("bfloat16", 0.0, 0.2)])
def test_one_sft_step_at_lr_5e6_changes_every_weight_only_with_master_weights(tmp_path, dtype, low, high):
    sft_train.main(SFTConfig(model="tiny", dtype=dtype, train_examples=8, max_length=700, max_steps=1,
                             gradient_accumulation_steps=1, learning_rate=5e-6, warmup_ratio=0.0,
                             eval_every=-1, output_dir=str(tmp_path)))
    share = changed_share(tmp_path / "checkpoint-1")
    assert low <= share <= high, share


def test_mixed_logprobs_and_loss_agree_with_float32_within_bfloat16_tolerance():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    prompts = torch.tensor([tok("What is 2 + 3?").input_ids] * 2)
    completion = torch.tensor([tok(" 5, so 5!").input_ids, tok(" six or 6").input_ids])
    args = (model, prompts, torch.ones_like(prompts), completion)
    exact = token_logprobs(*args)[0]
    with Precision(torch.float32, torch.bfloat16, "cpu").autocast():
        mixed = token_logprobs(*args)[0]
    assert mixed.dtype == torch.float32                    # log-softmax in float32, from bfloat16 products
    assert not torch.equal(mixed, exact)                   # bfloat16 did run
    assert torch.allclose(mixed, exact, atol=0.05), (mixed - exact).abs().max()  # 8 bits: ~0.4% of a logit
    ids = torch.cat([prompts, completion], 1)
    targets = torch.cat([torch.full_like(prompts, -100), completion], 1)[:, 1:]
    nll = target_nll(model, ids[:, :-1], targets)[0]       # the SFT and distillation loss path
    with Precision(torch.float32, torch.bfloat16, "cpu").autocast():
        nll_mixed = target_nll(model, ids[:, :-1], targets)[0]
    assert nll_mixed.dtype == torch.float32 and nll_mixed.item() == pytest.approx(nll.item(), rel=1e-2)
    assert nll.item() == pytest.approx(-exact.sum().item(), rel=1e-5)   # the same tokens, two code paths


def test_mixed_sampling_and_a_grpo_run_keep_float32_weights(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    prompt = [tok("What is 2 + 3?").input_ids]
    with Precision(torch.float32, torch.bfloat16, "cpu").autocast():
        lean = sample(model, prompt, group_size=2, max_new_tokens=6, temperature=0, eos_token_id=-1)
        plain = sample(model, prompt, group_size=2, max_new_tokens=6, temperature=0, eos_token_id=-1, lean=False)
    assert lean.completion_ids.shape == (2, 6)
    # greedy bfloat16 tokens from the lean step and the model's forward: the same on the first tokens
    assert torch.equal(lean.completion_ids[:, :3], plain.completion_ids[:, :3])
    grpo_train.main(GRPOConfig(model="tiny", dtype="bf16-mixed", group_size=4, prompts_per_step=2,
                               max_completion_length=8, max_steps=1, learning_rate=5e-6, beta=0.04,
                               eval_every=-1, output_dir=str(tmp_path), reward_funcs="tests.toy_rewards:vowel_share"))
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-1")
    assert trained.dtype == torch.float32 and changed_share(tmp_path / "checkpoint-1") > 0.9
    gap = read_jsonl(tmp_path / "metrics.jsonl")[-1]["sampler_logp_gap"]
    assert 1e-4 < gap < 0.1, gap   # bfloat16 copies sample, float32 master weights train: close, not equal
