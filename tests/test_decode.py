import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import lm.draw
from lm.chat import encode_prompt
from lm.decode import LeanDecoder
from lm.logprobs import token_logprobs
from lm.sampling import sample


def sharpened(model):
    """Scale the random weights up so that greedy completions vary (and sequences finish at
    different steps), and give every bias a random value so that biases are exercised."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(8)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def tiny_qwen2(tok):
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def logits_of_each_step(monkeypatch, model, prompts, **kw):
    """(samples, [(n, V) logits of each decoding step]) with the sampler's token choice spied on."""
    seen, choose = [], lm.draw.draw
    monkeypatch.setattr(lm.draw, "draw", lambda logits, *a: (seen.append(logits.clone()), choose(logits, *a))[1])
    out = sample(model, prompts, **kw)
    monkeypatch.setattr(lm.draw, "draw", choose)
    return out, seen


def ending_some_rows_mid_way(ids: torch.Tensor) -> int:
    """A token that, taken as EOS, ends some rows after at least 3 tokens and leaves some to the end."""
    for token in ids.unique().tolist():
        first = [row.index(token) if token in row else None for row in ids.tolist()]
        ended = [i for i in first if i is not None]
        if ended and min(ended) >= 3 and None in first:
            return token
    raise AssertionError("no such token: change the prompts")


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_decoding_gives_the_logits_of_the_models_forward(monkeypatch, tok, arch, device):
    # Left-padded prompts of different lengths, groups of 2, and an EOS that makes some sequences
    # leave the batch mid-way (the prepacked weights then see fewer rows than they were packed for).
    # On a GPU the step's layers are compiled (lm.decode.COMPILE_ON_CUDA); it runs uncaptured here so
    # that every step's logits can be read (tests/test_sampler.py compares the graphs with it).
    from lm.loading import tiny_model
    model = sharpened(tiny_model(tok, seed=0) if arch == "llama" else tiny_qwen2(tok)).to(device)
    assert LeanDecoder.supports(model)
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?"), encode_prompt(tok, "hi")]
    reference, _ = logits_of_each_step(monkeypatch, model, prompts, group_size=2, max_new_tokens=12,
                                       temperature=0, eos_token_id=tok.eos_token_id, lean=False)
    eos = ending_some_rows_mid_way(reference.completion_ids)
    kw = dict(group_size=2, max_new_tokens=12, temperature=0, eos_token_id=eos, pad_token_id=tok.pad_token_id,
              cuda_graphs=False)
    slow, slow_logits = logits_of_each_step(monkeypatch, model, prompts, lean=False, **kw)
    fast, fast_logits = logits_of_each_step(monkeypatch, model, prompts, **kw)
    assert torch.equal(slow.completion_ids, fast.completion_ids)
    assert torch.equal(slow.completion_mask, fast.completion_mask)
    assert slow.completion_mask.sum(-1).min() < 12 and len(slow_logits) == 12  # some left, some ran on
    assert [x.shape for x in slow_logits] == [x.shape for x in fast_logits]
    assert len({x.shape[0] for x in fast_logits}) > 1                           # rows were dropped
    atol = 1e-4 if device == "cpu" else 1e-3   # on a GPU, fused and compiled kernels add in other orders
    for a, b in zip(slow_logits, fast_logits):
        assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max()
    assert slow_logits[-1].abs().max() > 1  # sharpened: the logits are far from zero


def test_models_the_lean_step_does_not_cover_use_the_forward(tok):
    from lm.loading import tiny_model
    assert LeanDecoder.supports(tiny_model(tok))
    gelu = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, hidden_act="gelu"))
    assert not LeanDecoder.supports(gelu)
    windowed = tiny_qwen2(tok)
    windowed.config.use_sliding_window = True
    assert not LeanDecoder.supports(windowed)
    out = sample(gelu.eval(), [[1, 2, 3]], max_new_tokens=4, temperature=0, eos_token_id=-1)
    assert out.completion_ids.shape == (1, 4)


def test_in_the_weights_dtype_the_sampler_reads_single_matrices_in_place_and_follows_each_update(tok):
    # pure bfloat16 training (issue 29): o, down and the output layer are the trainer's own tensors, not
    # copies (the fused q|k|v and gate|up stay copies); after a torchao update the lean step still
    # computes the updated model: its logits are the forward's, and the copies were refreshed
    from common.optim import make_optimizer
    from lm.sampling import lean_decoder
    model = tiny_qwen2(tok).to(torch.bfloat16)
    decoder = lean_decoder(model)
    shares = lambda copy, param: copy.weight.data_ptr() == param.data_ptr()
    layer = model.model.layers[0]
    assert shares(decoder.layers[0]["o"], layer.self_attn.o_proj.weight)
    assert shares(decoder.layers[0]["down"], layer.mlp.down_proj.weight)
    assert shares(decoder.top["head"], model.lm_head.weight)
    assert not shares(decoder.layers[0]["qkv"], layer.self_attn.q_proj.weight)
    opt = make_optimizer(model, lr=0.05, optim="adamw_torch")
    ids = torch.tensor([encode_prompt(tok, "What is 17 * 23 - 5?")])
    model(ids, labels=ids).loss.backward()
    opt.step()
    prompts = [encode_prompt(tok, "2+2?")]
    kw = dict(group_size=1, max_new_tokens=6, temperature=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    slow, fast = sample(model, prompts, lean=False, **kw), sample(model, prompts, **kw)
    assert lean_decoder(model) is decoder and torch.equal(slow.completion_ids, fast.completion_ids)
    assert torch.allclose(slow.sampler_logp, fast.sampler_logp, atol=0.05)


@pytest.mark.parametrize("adapters", [False, True])
def test_a_large_model_is_read_in_place_with_loras_low_rank_part_and_follows_each_update(tok, monkeypatch, adapters):
    # issue 30: above IN_PLACE_ABOVE bytes a model in the compute dtype is not copied: every projection
    # reads the trainer's own tensors (LoRA: the frozen base, plus x A^T (s B)^T from small copies of the
    # adapters), and the lean step still computes the forward's model, before and after an update
    import lm.decode
    from lm import lora
    from lm.sampling import lean_decoder
    monkeypatch.setattr(lm.decode, "IN_PLACE_ABOVE", 0)
    model = tiny_qwen2(tok).to(torch.bfloat16)
    with torch.no_grad():                                       # q/k/v biases, read in place too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    if adapters:
        lora.add_adapters(model, r=4, alpha=8, dropout=0.0)
        torch.manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:   # peft starts B at 0 (the adapted model = the base): move it
                p.data.normal_(0, 0.5)
    decoder = lean_decoder(model)
    own = {p.data_ptr() for p in model.parameters()}
    held = [t for layer in decoder.layers for k in ("qkv", "o", "gate_up", "down") for part in layer[k].parts
            for t in part if t is not None] + [t for t in decoder.top["head"].parts[0] if t is not None]
    copied = sum(t.numel() for t in held if t.data_ptr() not in own)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert copied == (trainable if adapters else 0), (copied, trainable)   # the adapters, nothing of the base
    assert all(len(layer["qkv"].parts) == 3 and len(layer["gate_up"].parts) == 2 for layer in decoder.layers)
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?")]

    def sampler_gap():  # the sampler's log-probs against the forward's on the completions it drew
        s = sample(model, prompts, group_size=3, max_new_tokens=8, temperature=1.0, keys=[1, 2],
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            forward = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)[0]
        gap = (forward - s.sampler_logp)[s.completion_mask.bool()].abs()
        return gap.mean().item(), gap.max().item()

    # bfloat16 rounding of two code paths: mean gap < 0.006, max < 0.08 here, the copies' path alike;
    # adapters without their scaling 0.05 / 0.2, adapter copies not refreshed after the update 0.15 / 0.5
    mean, largest = sampler_gap()
    assert mean < 0.01 and largest < 0.1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.2)
    ids = torch.tensor([prompts[1]])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    mean, largest = sampler_gap()
    assert mean < 0.01 and largest < 0.1 and lean_decoder(model) is decoder
