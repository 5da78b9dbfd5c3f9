"""Training state below 16 bytes a parameter (issue 29): bfloat16 weights updated with stochastic
rounding, AdamW's moments in 8 or 4 bits (torchao), and every mode resumes exactly.

torchao compiles its step per parameter shape; on a CPU the tests run it eagerly (conftest.py).
"""
import pytest
import torch

import grpo.train as grpo_train
import sft.train as sft_train
from common.optim import make_optimizer, state_bytes_per_parameter
from common.runlog import read_jsonl
from grpo.config import GRPOConfig
from sft.train import SFTConfig


def adamw_steps(dtype, optim, steps=20, lr=2e-5, seed=0):
    """Mean change of 4,096 weights of ~0.02 after `steps` AdamW steps on a constant gradient."""
    torch.manual_seed(seed)
    start = (0.02 + 0.002 * torch.rand(64, 64)).to(dtype)                 # spacing of bfloat16 here: 1.2e-4
    layer = torch.nn.Linear(64, 64, bias=False).to(dtype)
    layer.weight.data.copy_(start)
    opt = make_optimizer(layer, lr=lr, optim=optim) if optim else torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        layer.weight.grad = torch.ones_like(layer.weight)                  # Adam moves each weight by -lr a step
        opt.step()
    return (layer.weight.detach().float() - start.float()).mean().item()


def test_stochastic_rounding_keeps_the_expected_update_that_plain_bfloat16_loses():
    exact = adamw_steps(torch.float32, "adamw_torch")
    assert exact == pytest.approx(-20 * 2e-5, rel=1e-3)                     # 20 steps of -lr
    plain = adamw_steps(torch.bfloat16, None)                               # torch's AdamW, round to nearest
    assert abs(plain) < 0.05 * abs(exact)                                   # every update rounded away
    for optim in ("adamw_torch", "adamw_torch_8bit", "adamw_torch_4bit"):
        rounded = adamw_steps(torch.bfloat16, optim)                        # torchao, stochastic rounding
        assert rounded == pytest.approx(exact, rel=0.05), optim


def test_quantised_states_take_the_bytes_they_promise():
    layer = torch.nn.Linear(512, 512, bias=False).to(torch.bfloat16)
    for optim, moments in (("adamw_torch", 4), ("adamw_torch_8bit", 2), ("adamw_torch_4bit", 1)):
        opt = make_optimizer(layer, lr=1e-3, optim=optim)
        layer.weight.grad = torch.ones_like(layer.weight)
        opt.step()
        state = opt.state[layer.weight]
        held = sum(_bytes(state[k]) for k in ("exp_avg", "exp_avg_sq")) / layer.weight.numel()
        assert moments <= held <= moments * 1.07, (optim, held)
        # the plan's figure (per-block scales included; each state's small codebook is not)
        assert held == pytest.approx(state_bytes_per_parameter(optim, torch.bfloat16), rel=0.01), optim
    with pytest.raises(ValueError, match="--optim 'adamw_8bit': choose one of adamw_torch, adamw_torch_8bit"):
        make_optimizer(layer, lr=1e-3, optim="adamw_8bit")
    with pytest.raises(ValueError, match="--optim adamw_torch_8bit with --fsdp: torchao's quantised AdamW state"):
        SFTConfig(optim="adamw_torch_8bit", fsdp=True)   # torchrun: OptimState8bit has no aten.view(dtype)


def _bytes(t) -> int:
    if hasattr(t, "__tensor_flatten__"):                                    # torchao's quantised state
        names, _ = t.__tensor_flatten__()
        return sum(_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


@pytest.mark.parametrize("dtype, optim", [("bfloat16", "adamw_torch"), ("float32", "adamw_torch_8bit")])
def test_sft_in_each_mode_resumes_exactly(tmp_path, dtype, optim):
    kw = dict(model="tiny", train_examples=16, max_length=700, max_steps=4, gradient_accumulation_steps=1,
              learning_rate=1e-3, lr_scheduler="constant", eval_every=-1, save_every=2, dtype=dtype, optim=optim)
    sft_train.main(SFTConfig(output_dir=str(tmp_path / "full"), **kw))
    sft_train.main(SFTConfig(output_dir=str(tmp_path / "cut"), **{**kw, "max_steps": 2}))
    sft_train.main(SFTConfig(output_dir="ignored", resume=str(tmp_path / "cut"), **kw))
    full, cut = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [m["step"] for m in cut] == [1, 2, 3, 4]
    assert full[-1]["loss"] < full[0]["loss"]                                # it learns
    for a, b in zip(full, cut):
        assert (b["loss"], b["grad_norm"]) == (a["loss"], a["grad_norm"]), a["step"]


def test_grpo_in_bfloat16_with_4bit_state_resumes_exactly(tmp_path):
    kw = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=8, max_steps=4,
              micro_batch_size=4, learning_rate=1e-3, eval_every=-1, save_every=2, dtype="bfloat16",
              optim="adamw_torch_4bit", reward_funcs="tests.toy_rewards:vowel_share")
    grpo_train.main(GRPOConfig(output_dir=str(tmp_path / "full"), **kw))
    grpo_train.main(GRPOConfig(output_dir=str(tmp_path / "cut"), **{**kw, "max_steps": 2}))
    grpo_train.main(GRPOConfig(output_dir="ignored", resume=str(tmp_path / "cut"), **kw))
    full, cut = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert all(m["grad_norm"] > 0 for m in full)
    for a, b in zip(full, cut):
        assert (b["reward"], b["grad_norm"]) == (a["reward"], a["grad_norm"]), a["step"]
    import json
    assert json.loads((tmp_path / "full" / "config.json").read_text())["optim"] == "adamw_torch_4bit"


def test_plan_counts_each_component_by_hand_and_trains_nothing(tmp_path, capsys, monkeypatch):
    import dataclasses
    from common.memory import grpo_components
    from lm.loading import tiny_tokenizer
    import run
    V = len(tiny_tokenizer())                       # the tiny Llama: H 64, I 128, 2 layers, 4 heads, 2 KV heads
    layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64   # q, k, v, o, gate/up/down, 2 norms
    n = V * 64 + 2 * layer + 64                     # embedding (tied output layer), layers, final norm
    config = GRPOConfig(model="tiny", dtype="bfloat16", optim="adamw_torch_8bit", prompts_per_step=2, group_size=4,
                        max_completion_length=16, micro_batch_size=8, reward_funcs="format")
    parts = dict(grpo_components(config, torch.device("cpu"))[0])
    assert parts["weights (torch.bfloat16)"] == 2 * n and parts["gradients"] == 2 * n
    assert parts["optimizer state (adamw_torch_8bit)"] == pytest.approx(n * 2 * (1 + 4 / 256))
    # the sampler copies the layers' matrices, except o, down and the output layer, already bfloat16
    assert parts["sampler's weight copies (torch.bfloat16)"] == 2 * 2 * (layer - 64 * 64 - 64 * 128)
    assert parts["KV cache, sampling 8 rows x 176 positions"] == 2 * 2 * 2 * 16 * (160 + 16) * 8 * 2
    assert parts["reference model (beta > 0)"] == 0
    # a model above lm.decode.IN_PLACE_ABOVE (0 here) on a GPU: the sampler copies nothing but LoRA's adapters
    # (rank 4 on every linear layer of the 2 layers: r (in + out) each), and the GPU receives the weights once
    import lm.decode
    monkeypatch.setattr(lm.decode, "IN_PLACE_ABOVE", 0)
    parts, phases = grpo_components(config, torch.device("cuda"))
    assert parts[3] == ("sampler's weight copies (torch.bfloat16)", 0) and phases["loading"] == 2 * n
    # training holds the sampler's KV cache too there: its CUDA graphs keep the rollout (process: 0 on a GPU)
    assert phases["training"] == sum(size for name, size in parts if not name.startswith("a layer merged"))
    # activations of a micro-batch of 8 x 16 tokens attending over 176 positions: (32 + 4 x 176 / 128) x 64
    # + 8 x 128 = 3,424 bytes a token a layer in bfloat16; --activation-offload leaves one layer's on a GPU
    acts = lambda device, **kw: dict(grpo_components(dataclasses.replace(config, **kw), torch.device(device))[0])[
        "activations, one micro-batch of 8"]
    assert acts("cuda") == 2 * 128 * 3424 and acts("cuda", activation_offload=True) == 128 * 3424
    # checkpointing keeps each layer's input (128 x 64 x 2 bytes) and one layer's; offloaded, the inputs go too
    assert acts("cuda", gradient_checkpointing=True) == 2 * 128 * 64 * 2 + 128 * 3424
    assert acts("cuda", gradient_checkpointing=True, activation_offload=True) == 128 * 3424
    assert acts("cpu", activation_offload=True) == acts("cpu")                # host memory already
    # --offload-optimizer: AdamW's state in host memory on a GPU; on a CPU it is there already
    state = lambda device, **kw: dict(grpo_components(dataclasses.replace(config, **kw), torch.device(device))[0])
    assert state("cuda", offload_optimizer=True)["optimizer state (adamw_torch_8bit, in host memory)"] == 0
    assert state("cpu", offload_optimizer=True)["optimizer state (adamw_torch_8bit)"] == pytest.approx(n * 2 * (1 + 4 / 256))
    # beta > 0: a reference in the compute dtype through the update; --offload-reference: only while it runs
    ref = dataclasses.replace(config, beta=0.1)
    parts, phases = grpo_components(ref, torch.device("cuda"))
    parts = dict(parts)
    assert parts["reference model (beta > 0)"] == 2 * n and "reference" not in phases
    parts_off, phases_off = grpo_components(dataclasses.replace(ref, offload_reference=True), torch.device("cuda"))
    assert phases_off["training"] == phases["training"] - 2 * n and phases_off["sampling"] == phases["sampling"] - 2 * n
    chunk = next(size for name, size in parts.items() if name.startswith("log-prob chunk"))
    kv = next(size for name, size in parts.items() if name.startswith("KV cache"))
    assert phases_off["reference"] == phases_off["saving"] - parts["a layer merged as a checkpoint is written (LoRA)"] \
        + 2 * n + chunk + kv
    lora_config = dataclasses.replace(config, use_peft=True, lora_r=4, optim="adamw_torch")
    # LoRA's dropout (0.05): a copy of each adapted layer's input and its mask, (2 + 1) bytes a value; the
    # inputs of q, k, v, o, gate, up (64 each) and down (128), 2 layers, 128 tokens
    lora_acts = lambda **kw: dict(grpo_components(dataclasses.replace(lora_config, **kw), torch.device("cuda"))[0])[
        "activations, one micro-batch of 8"]
    assert lora_acts() == acts("cuda") + 128 * 2 * (6 * 64 + 128) * 3 and lora_acts(lora_dropout=0.0) == acts("cuda")
    adapters = 2 * 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    assert dict(grpo_components(lora_config, torch.device("cuda"))[0])[
        "sampler's weight copies (torch.bfloat16)"] == 2 * adapters
    assert run.main(["grpo", "--model", "tiny", "--plan", "--output-dir", str(tmp_path / "never")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("predicted peak: ") and out[-1].endswith(" GiB") and "gradients" in "\n".join(out)
    assert not (tmp_path / "never").exists()                                 # nothing loaded, nothing written
    for command in (["sft", "--model", "tiny"], ["distill", "--teacher", "tiny", "--student-from-teacher-layers", "1"]):
        assert run.main([*command, "--plan", "--output-dir", str(tmp_path / "never")]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("predicted peak: ") and not (tmp_path / "never").exists(), command
