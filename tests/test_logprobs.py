import torch

from lm.chat import encode_prompt
from lm.logprobs import positions_from_mask, target_nll, token_logprobs
from lm.sampling import sample


def plain_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    logits = model(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    logits = logits[:, prompt_ids.shape[1] - 1:-1] / temperature
    return logits.log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)


def test_chunked_logprobs_match_plain_log_softmax_gather_values_and_gradients(model, tok):
    prompts = [encode_prompt(tok, "What is 4 + 4?"), encode_prompt(tok, "hi")]
    s = sample(model, prompts, group_size=2, max_new_tokens=9, temperature=1.0,
               eos_token_id=tok.eos_token_id, generator=torch.Generator().manual_seed(0))
    args = (s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)
    # chunk of 5 positions does not divide N*T = 36: the last chunk is partial
    chunked, _ = token_logprobs(model, *args, temperature=0.7, chunk_size=5)
    plain = plain_logprobs(model, *args, temperature=0.7)
    assert chunked.shape == (4, 9)
    assert torch.allclose(chunked, plain, atol=1e-5, rtol=0)

    weights = torch.randn(4, 9, generator=torch.Generator().manual_seed(3))
    (chunked * weights).sum().backward()
    g_chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (plain * weights).sum().backward()
    for a, (name, p) in zip(g_chunked, model.named_parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5, rtol=1e-4), name


def test_entropy_of_tempered_distribution_matches_definition(model, tok):
    prompt = torch.tensor([encode_prompt(tok, "x")])
    completion = torch.tensor([[40, 41, 42]])
    with torch.no_grad():
        _, entropy = token_logprobs(model, prompt, torch.ones_like(prompt), completion,
                                    temperature=2.0, with_entropy=True)
        logits = model(torch.cat([prompt, completion], 1)).logits[:, prompt.shape[1] - 1:-1] / 2.0
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum(-1)
    assert torch.allclose(entropy, expected, atol=1e-5)
    # in training (gradients on) the entropy is a statistic: no graph, so its vocabulary-sized
    # products keep nothing alive until the backward pass; the log-probs keep theirs
    for chunk in (1024, 2):                       # one chunk (logits kept) and several (recomputed)
        logp, entropy = token_logprobs(model, prompt, torch.ones_like(prompt), completion, temperature=2.0,
                                       with_entropy=True, chunk_size=chunk)
        assert logp.grad_fn is not None and entropy.grad_fn is None
        assert torch.allclose(entropy, expected, atol=1e-5)


def test_target_nll_matches_cross_entropy_of_full_logits_values_and_gradients(model, tok):
    # The fused path computes the output layer's gradient in the forward pass; compare the loss and
    # every parameter's gradient (the tied embedding/output matrix included) with plain autograd.
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (2, 23))
    targets = torch.roll(ids, -1, 1)
    targets[:, :5] = -100                                      # a prompt with no loss
    targets[:, -1] = -100
    model.train()
    nll, count = target_nll(model, ids, targets, chunk_size=7)  # chunks that do not divide M = 34
    (2.5 * nll).backward()                                     # an upstream scale reaches every gradient
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids).logits
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                              ignore_index=-100, reduction="sum")
    (2.5 * plain).backward()
    assert count == 34
    assert torch.allclose(nll, plain, rtol=1e-6, atol=1e-5)
    for n, p in model.named_parameters():
        assert (fused[n] - p.grad).abs().max() <= 1e-5 * p.grad.abs().max(), (n, (fused[n] - p.grad).abs().max())
    with torch.no_grad():                                      # and with no gradient: the value alone
        assert torch.allclose(target_nll(model, ids, targets)[0], plain, rtol=1e-6, atol=1e-5)


def test_shared_prompt_forward_matches_the_plain_forward_values_and_gradients(model, tok):
    # Prompts of different lengths (left padding), two repeated and one alone, rows interleaved, and
    # completions with padding after an EOS: running each prompt once and its completions on copies
    # of its KV cache must give the plain [prompt | completion] forward's log-probs and gradients.
    a, b, c = (encode_prompt(tok, q) for q in ("What is 4 + 4?", "hi", "Compute 12 * 3 - 5."))
    s = sample(model, [a, b, c], group_size=2, max_new_tokens=7, temperature=1.0,
               eos_token_id=tok.eos_token_id, generator=torch.Generator().manual_seed(1))
    order = torch.tensor([0, 2, 1, 4, 3])                       # drop row 5: prompt c appears once
    args = [x[order] for x in (s.prompt_ids, s.prompt_mask, s.completion_ids)]
    completion_mask = s.completion_mask[order].clone()
    completion_mask[1, 4:] = 0                                  # padding after an EOS
    weights = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))
    grads, values = [], []
    for share in (True, False):
        model.zero_grad()
        logp, entropy = token_logprobs(model, *args, completion_mask, temperature=0.8, share_prompts=share,
                                       with_entropy=True)
        ((logp + 0.1 * entropy) * weights * completion_mask).sum().backward()
        values.append((logp * completion_mask, entropy * completion_mask))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(values[0][0], values[1][0], atol=1e-5, rtol=0)
    assert torch.allclose(values[0][1], values[1][1], atol=1e-5, rtol=0)
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n
