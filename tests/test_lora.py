"""--use-peft: LoRA adapters (peft) for grpo, sft and distill; the sampler samples the adapted model,
checkpoints hold the merged model plus the adapter, resume continues the adapters exactly."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import grpo.train
from distill.train import DistillConfig
from distill.train import main as distill
from grpo.config import GRPOConfig
from lm import lora, sample, tiny_model, tiny_tokenizer, token_logprobs
from lm.chat import encode_prompt
from sft.train import SFTConfig
from sft.train import main as sft

peft = pytest.importorskip("peft")


def adapted_tiny():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    lora.add_adapters(model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:   # peft starts B at 0 (the adapted model = the base): move it
            p.data.normal_(0, 0.5)
    return tok, model.eval()


def test_the_sampler_samples_the_adapted_model_also_after_an_optimizer_step():
    tok, model = adapted_tiny()
    prompts = [encode_prompt(tok, q) for q in ("1 + 2 =", "what is 7 * 3?")]

    def gap_and_base_gap():
        s = sample(model, prompts, group_size=3, max_new_tokens=10, temperature=1.0, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, keys=[1, 2])
        with torch.no_grad():
            adapted = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)[0]
            with lora.adapters_off(model):
                base = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)[0]
        m = s.completion_mask.bool()
        return (adapted - s.sampler_logp)[m].abs().max().item(), (base - s.sampler_logp)[m].abs().max().item()

    gap, base_gap = gap_and_base_gap()
    assert gap < 1e-4 and base_gap > 1e-2          # the lean decoder's weights are W + B A * scaling
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.tensor([prompts[0]])).logits.sum().backward()
    optimizer.step()                               # the adapters move; the sampler's copies must follow
    gap, _ = gap_and_base_gap()
    assert gap < 1e-4


def test_merged_copy_and_adapter_give_the_adapted_models_logits(tmp_path):
    tok, model = adapted_tiny()
    ids = torch.tensor([encode_prompt(tok, "hello there")])
    with torch.no_grad():
        expected = model(ids).logits
        merged = lora.merged(model)
        assert not any("lora" in n for n in merged.state_dict())
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    # written a layer at a time (a shard each, no whole second copy): the same tensors, to the bit
    lora.save_merged(model, tmp_path / "merged")
    assert len(list((tmp_path / "merged").glob("model-*-of-*.safetensors"))) == 3   # 2 layers and the rest
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    assert written.keys() == merged.state_dict().keys()
    assert all(torch.equal(written[k], v) for k, v in merged.state_dict().items())
    lora.save_adapters(model, tmp_path / "adapter")
    base = tiny_model(tok)
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-5)


TINY_GRPO = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=8, max_steps=4,
                 micro_batch_size=4, learning_rate=1e-2, eval_every=-1, save_every=2, keep_checkpoints=5,
                 reward_funcs="tests.toy_rewards:vowel_share", use_peft=True, lora_r=4, lora_dropout=0.0)


def test_grpo_with_lora_saves_a_loadable_merged_model_and_resumes_exactly(tmp_path):
    kw = dict(TINY_GRPO, beta=0.04)
    grpo.train.main(GRPOConfig(**kw, output_dir=str(tmp_path / "full")))
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert full[0]["kl"] == 0.0 and full[-1]["kl"] > 0   # the reference: the model with its adapters off
    folder = tmp_path / "full" / "checkpoint-4"
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert (folder / "adapter" / "adapter_config.json").exists()
    saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert not any("lora" in k for k in saved)
    base = tiny_model(tiny_tokenizer()).state_dict()
    changed = [k for k in base if not torch.equal(base[k], saved[k])]
    assert changed and all("proj" in k for k in changed)   # only the adapted linear layers moved
    # resume from step 2: steps 3 and 4 as in the uninterrupted run
    cut = tmp_path / "cut"
    grpo.train.main(GRPOConfig(**{**kw, "max_steps": 2}, output_dir=str(cut)))
    grpo.train.main(GRPOConfig(**kw, output_dir="x", resume=str(cut)))
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(full[2:], again[2:]):
        for key in ("loss", "reward", "grad_norm", "kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)


def test_sft_and_distill_train_adapters_only(tmp_path):
    packed = dict(train_examples=8, max_length=700, max_steps=2, gradient_accumulation_steps=2, learning_rate=1e-2,
                  eval_every=-1, save_every=2, use_peft=True, lora_r=4, lora_dropout=0.0)
    sft(SFTConfig(model="tiny", **packed, output_dir=str(tmp_path / "sft")))
    distill(DistillConfig(teacher="tiny", student_from_teacher_layers="1", **packed, output_dir=str(tmp_path / "kd")))
    base = tiny_model(tiny_tokenizer()).state_dict()
    for run in ("sft", "kd"):
        folder = tmp_path / run / "checkpoint-2"
        assert (folder / "adapter" / "adapter_model.safetensors").exists()
        saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen
        assert not torch.equal(saved["model.layers.0.self_attn.q_proj.weight"],
                               base["model.layers.0.self_attn.q_proj.weight"])


def test_under_mixed_precision_the_frozen_base_is_held_in_bfloat16_and_resumes_exactly(tmp_path, monkeypatch):
    # a frozen weight needs no float32 master (issue 29): the base in the compute dtype, adapters float32
    seen, real = {}, lora.attach
    monkeypatch.setattr(lora, "attach", lambda model, *a, **k: seen.setdefault("model", real(model, *a, **k)))
    kw = dict(TINY_GRPO, dtype="bf16-mixed")
    grpo.train.main(GRPOConfig(**kw, output_dir=str(tmp_path / "full")))
    model = seen["model"]
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["grad_norm"] > 0 for m in full)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "checkpoint-4", dtype="auto")
    assert {p.dtype for p in saved.parameters()} == {torch.float32}      # merged in float32, as trained
    q = model.model.layers[0].self_attn.q_proj
    assert torch.equal(saved.model.layers[0].self_attn.q_proj.weight, lora.merged_weight(q, torch.float32))
    cut = tmp_path / "cut"
    grpo.train.main(GRPOConfig(**{**kw, "max_steps": 2}, output_dir=str(cut)))
    grpo.train.main(GRPOConfig(**kw, output_dir="x", resume=str(cut)))
    again = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(full, again):
        assert (b["reward"], b["grad_norm"]) == (a["reward"], a["grad_norm"]), a["step"]
