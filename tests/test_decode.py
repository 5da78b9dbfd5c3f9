import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import lm.draw
from lm.chat import encode_prompt
from lm.decode import LeanDecoder
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
