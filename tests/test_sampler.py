"""The sampler's interface: keyed randomness, its own log-probs, weights never stale, bucket changes,
and (with a GPU) the CUDA-graph step against the eager one."""
import copy

import pytest
import torch

import lm.decode
import lm.rollout
import lm.sampling
from common.optim import make_optimizer
from lm.chat import encode_prompt
from lm.decode import LeanDecoder
from lm.draw import filter_logits, mix32, prompt_keys, row_keys, uniform
from lm.loading import tiny_model
from lm.logprobs import token_logprobs
from lm.sampling import refresh_sampler, sample

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def sharp(tok, seed=0):
    """A tiny model whose sampled completions vary and end at different steps."""
    model = tiny_model(tok, seed=seed).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model


def test_keyed_uniforms_are_a_pure_function_of_key_and_index_and_look_uniform():
    keys = torch.arange(100_000, dtype=torch.int64)
    u = uniform(keys, 7)
    assert torch.equal(u, uniform(keys, torch.tensor(7)))                 # an int or a device tensor
    assert torch.equal(u[123:124], uniform(keys[123:124], 7))             # independent of the batch
    assert not torch.equal(u, uniform(keys, 8))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    deciles = torch.histc(u.float(), bins=10, min=0, max=1) / len(u)      # each 0.1 within 1%
    assert (deciles - 0.1).abs().max() < 0.01, deciles
    assert mix32(0).item() == mix32(torch.tensor(0)).item() and 0 <= mix32(-5).item() < 2 ** 32
    # distinct prompts, steps and members get distinct keys
    assert len(set(row_keys(prompt_keys(0, 1, range(64)), 8).tolist())) == 512
    assert not torch.equal(prompt_keys(0, 1, [3]), prompt_keys(0, 2, [3]))


def test_keyed_uniforms_are_jointly_uniform_where_grpo_pairs_them():
    # Issue 27 asked whether keyed sampling's numbers could bias GRPO: a GRPO step draws u for token t
    # of member g of prompt b at step s. Neighbours in each of those directions must be independent:
    # a 16 x 16 histogram of (u, its neighbour) is flat (chi-square, 255 degrees of freedom: 330 is
    # the 0.1% point; members sharing a key, or a key mixed too little, gives thousands).
    B, G, T, steps = 8, 8, 128, 100
    u = torch.stack([uniform(row_keys(prompt_keys(0, s, range(s * B, s * B + B)), G)[:, None], torch.arange(T))
                     for s in range(steps)]).view(steps, B, G, T)

    def chi2(x, y, bins=16):
        cells = torch.histc((x * bins).floor() * bins + (y * bins).floor(), bins=bins * bins, min=0, max=bins * bins)
        expected = len(x) / bins ** 2
        return ((cells - expected) ** 2 / expected).sum().item()

    pairs = {"token t, t+1": (u[..., :-1], u[..., 1:]), "member g, g+1": (u[:, :, :-1], u[:, :, 1:]),
             "prompt b, b+1": (u[:, :-1], u[:, 1:]), "step s, s+1": (u[:-1], u[1:])}
    for name, (x, y) in pairs.items():
        assert chi2(x.flatten().float(), y.flatten().float()) < 330, name


@pytest.mark.parametrize("lean", [True, False])
def test_a_completion_is_the_same_whichever_batch_its_prompt_lands_in(tok, lean):
    model = sharp(tok)
    a, b = encode_prompt(tok, "What is 7 * 6?"), encode_prompt(tok, "hi there, a much longer prompt than the other")
    kw = dict(group_size=3, max_new_tokens=10, temperature=1.0, eos_token_id=tok.eos_token_id, lean=lean)
    alone = sample(model, [a], keys=[11], **kw)
    batched = sample(model, [b, a], keys=[22, 11], **kw)
    assert torch.equal(alone.completion_ids, batched.completion_ids[3:, :alone.completion_ids.shape[1]])
    assert not torch.equal(alone.completion_ids[0], alone.completion_ids[1])   # group members differ
    again = sample(model, [a], keys=[11], **kw)
    assert torch.equal(alone.completion_ids, again.completion_ids)              # reproducible


def test_lean_and_forward_decoding_draw_the_same_tokens_with_the_same_keys(tok):
    model = sharp(tok)
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?")]
    kw = dict(group_size=4, max_new_tokens=16, temperature=1.0, top_k=20, top_p=0.9, eos_token_id=tok.eos_token_id,
              keys=[5, 6])
    lean, plain = sample(model, prompts, **kw), sample(model, prompts, lean=False, **kw)
    assert torch.equal(lean.completion_ids, plain.completion_ids)
    assert torch.allclose(lean.sampler_logp, plain.sampler_logp, atol=1e-5)


def test_sampler_logprobs_are_the_trained_distributions_at_each_drawn_token(tok):
    model = sharp(tok)
    prompts = [encode_prompt(tok, "What is 3 + 4?")]
    s = sample(model, prompts, group_size=4, max_new_tokens=12, temperature=0.7, eos_token_id=tok.eos_token_id, keys=[1])
    logp = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask, temperature=0.7)[0]
    m = s.completion_mask.bool()
    assert torch.allclose(s.sampler_logp[m], logp[m], atol=1e-4)
    assert (s.sampler_logp[~m] == 0).all()
    # with top-k the sampler draws from the renormalised top 3: its log-prob is that distribution's
    k = sample(model, prompts, group_size=4, max_new_tokens=6, temperature=0.7, top_k=3,
               eos_token_id=tok.eos_token_id, keys=[1])
    ids = torch.cat([k.prompt_ids, k.completion_ids], 1)
    logits = model(ids).logits[:, k.prompt_ids.shape[1] - 1:-1] / 0.7                    # (N, T, V)
    expected = filter_logits(logits, top_k=3).log_softmax(-1).gather(-1, k.completion_ids[..., None])[..., 0]
    m = k.completion_mask.bool()
    assert torch.allclose(k.sampler_logp[m], expected[m], atol=1e-4)
    full = logits.log_softmax(-1).gather(-1, k.completion_ids[..., None])[..., 0]
    assert (k.sampler_logp[m] > full[m]).all()   # renormalised over 3 tokens: more than under the full softmax


def test_the_sampler_never_decodes_with_stale_weights(tok):
    model = sharp(tok)
    prompts = [encode_prompt(tok, "What is 3 + 4?")]
    kw = dict(group_size=2, max_new_tokens=12, temperature=0, eos_token_id=-1)
    before = sample(model, prompts, **kw).completion_ids
    with torch.no_grad():  # an optimizer step changes the parameters in place
        model.model.layers[0].mlp.down_proj.weight.mul_(-3)
        model.model.layers[1].self_attn.q_proj.weight.add_(1.0)
    after = sample(model, prompts, **kw).completion_ids
    fresh = sample(copy.deepcopy(model), prompts, **kw).completion_ids          # a decoder built anew
    assert torch.equal(after, fresh) and not torch.equal(after, before)
    # fused AdamW writes the weights without moving their version counters (the kill test found it)
    optimizer = make_optimizer(model, lr=0.5)
    model(torch.tensor(prompts)).logits.sum().backward()
    optimizer.step()
    stepped = sample(model, prompts, **kw).completion_ids
    assert torch.equal(stepped, sample(copy.deepcopy(model), prompts, **kw).completion_ids)
    assert not torch.equal(stepped, after)
    # a change that the version counters do not see (through .data) needs the refresh hook
    model.model.layers[1].mlp.up_proj.weight.data.mul_(-2)
    refresh_sampler(model)
    assert torch.equal(sample(model, prompts, **kw).completion_ids, sample(copy.deepcopy(model), prompts, **kw).completion_ids)


def test_bucket_changes_pad_with_finished_rows_and_change_no_token(tok, monkeypatch):
    # The GPU's policy run eagerly: N = 12 -> buckets 12, 6, 3, 2, 1, a check every 4 steps; the running
    # rows move into a prefix padded with finished rows. Tokens and log-probs equal the model's forward's.
    model = sharp(tok)
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?"), encode_prompt(tok, "hi")]
    kw = dict(group_size=4, max_new_tokens=40, temperature=1.0, keys=[1, 2, 3], pad_token_id=tok.pad_token_id)
    ids = sample(model, prompts, eos_token_id=-1, **kw).completion_ids
    rows_with = {t: sum(t in r[2:] for r in ids.tolist()) for t in ids[:, 2:].unique().tolist()}
    candidates = sorted((t for t in rows_with if rows_with[t] < len(ids)), key=rows_with.get, reverse=True)[:5]
    monkeypatch.setattr(lm.rollout, "EAGER_BUCKETS", True)
    monkeypatch.setattr(lm.rollout, "GRAPH_CHECK_EVERY", 4)
    monkeypatch.setattr(lm.rollout, "LENGTH_BUCKET", 16)  # attention over the filled columns rounded up to 16
    windows, step = [], lm.rollout.Rollout.step
    monkeypatch.setattr(lm.rollout.Rollout, "step", lambda self, decoder, n, settings, window: (
        windows.append((int(self.base + self.t), window, self.cache.capacity)), step(self, decoder, n, settings, window))[1])
    shrinks, real = [], lm.rollout.Rollout.keep_first
    monkeypatch.setattr(lm.rollout.Rollout, "keep_first",
                        lambda self, n, b: (shrinks.append((n, b, int((~self.finished[:n]).sum()))), real(self, n, b))[1])
    for eos in candidates:  # EOS tokens that end many rows at different steps
        lean = sample(model, prompts, eos_token_id=eos, **kw)
        plain = sample(model, prompts, eos_token_id=eos, lean=False, **kw)
        assert torch.equal(lean.completion_ids, plain.completion_ids), eos
        assert torch.equal(lean.completion_mask, plain.completion_mask)
        assert torch.allclose(lean.sampler_logp, plain.sampler_logp, atol=1e-5)
    assert all(b in (6, 3, 2, 1) and running <= b < n for n, b, running in shrinks), shrinks
    # each step reads the columns filled so far (through its own token's), rounded up to 16 below the capacity
    assert all(w == min(c, -(-filled // 16) * 16) for filled, w, c in windows), windows
    assert len({w for _, w, c in windows if w < c}) >= 2, windows       # the window grew with the completion
    assert any(running < b for n, b, running in shrinks), shrinks     # a bucket padded with finished rows


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length_bucket", [512, 8])  # 8: a graph per 8 columns, the window grows as it decodes
@pytest.mark.parametrize("in_place", [False, True])   # True: weights read where they lie (a large model's way)
def test_cuda_graph_decoding_equals_eager_decoding(tok, dtype, length_bucket, in_place, monkeypatch):
    monkeypatch.setattr(lm.rollout, "LENGTH_BUCKET", length_bucket)
    if in_place:
        monkeypatch.setattr(lm.decode, "IN_PLACE_ABOVE", 0)
    model = sharp(tok).to("cuda", dtype)
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?"), encode_prompt(tok, "hi")]
    kw = dict(group_size=4, max_new_tokens=24, temperature=1.0, eos_token_id=tok.eos_token_id, keys=[1, 2, 3])
    eager = sample(model, prompts, cuda_graphs=False, **kw)
    graphed = sample(model, prompts, cuda_graphs=True, **kw)
    again = sample(model, prompts, cuda_graphs=True, **kw)                      # replays the kept graphs
    assert torch.equal(eager.completion_ids, graphed.completion_ids)
    assert torch.equal(graphed.completion_ids, again.completion_ids)
    assert torch.allclose(eager.sampler_logp, graphed.sampler_logp, atol=1e-3)
    # one kept rollout a model: another shape (an evaluation) replaces it, and the first shape comes back right
    kept = lambda: list(lm.sampling._rollouts[lm.sampling.lean_decoder(model)])
    assert len(kept()) == 1
    other = sample(model, prompts[:1], **{**kw, "group_size": 2, "keys": [1]})
    assert len(kept()) == 1 and kept()[0][0] == 2 and len(other.completion_ids) == 2
    assert torch.equal(sample(model, prompts, cuda_graphs=True, **kw).completion_ids, eager.completion_ids)


@cuda
def test_the_compiled_lean_step_draws_what_the_uncompiled_one_draws(tok):
    # float32: in bfloat16 the compiled kernels round once where the uncompiled ops round at each op,
    # so a draw near a boundary may differ (the graph-vs-eager test runs bfloat16, both compiled)
    model = sharp(tok).to("cuda")
    prompts = [encode_prompt(tok, "2+2?"), encode_prompt(tok, "What is 17 * 23 - 5?"), encode_prompt(tok, "hi")]
    kw = dict(group_size=4, max_new_tokens=24, temperature=1.0, eos_token_id=tok.eos_token_id, keys=[1, 2, 3])
    assert lm.sampling.lean_decoder(model).compiled                             # the default on a GPU
    compiled = sample(model, prompts, **kw)
    lm.sampling._decoders[model] = LeanDecoder(model, compile=False)
    plain = sample(model, prompts, **kw)
    assert torch.equal(compiled.completion_ids, plain.completion_ids)
    assert torch.allclose(compiled.sampler_logp, plain.sampler_logp, atol=1e-3)


@cuda
def test_a_cuda_graph_never_samples_from_stale_weights(tok):
    model = sharp(tok).to("cuda")
    prompts = [encode_prompt(tok, "What is 3 + 4?")]
    kw = dict(group_size=4, max_new_tokens=12, temperature=1.0, eos_token_id=-1, keys=[5], cuda_graphs=True)
    before = sample(model, prompts, **kw).completion_ids
    model.load_state_dict(sharp(tok, seed=1).state_dict())                      # in place: another model
    after = sample(model, prompts, **kw).completion_ids                          # same graphs, new weights
    assert torch.equal(after, sample(copy.deepcopy(model), prompts, **kw).completion_ids)
    assert not torch.equal(after, before)
