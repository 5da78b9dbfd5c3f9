"""Batched sampling with a KV cache: B prompts x G completions each.

Shapes: B prompts, G completions per prompt, N = B*G sequences, P prompt length (after left
padding), T new tokens, V vocabulary.

1. The B prompts are left-padded to one length and run once through the model (prefill): the group
   of G completions of a prompt shares its prompt's prefill, whose KV cache is then repeated G times.
2. Each decoding step feeds the N last tokens with their own positions (a padded prompt's positions
   start at 0 at its first real token).
3. A sequence is finished at its first EOS; later tokens are padding. The completion mask covers the
   tokens up to and including that first EOS, also when pad == eos. A sequence with no EOS within the
   budget is truncated.
4. Randomness is keyed (lm/draw.py): completion g of a prompt with key k draws its t-th token with
   u = hash(k, g, t). Pass `keys` (one per prompt; GRPO derives them from the seed, the step and the
   prompt's global index) and a completion comes out the same in any batch; without keys they are
   drawn from `generator`. The sampler's own log-prob of every token it drew is returned
   (`sampler_logp`), so the trainer's log-probs can be compared with the sampler's.

Llama-family models (Llama, SmolLM, Qwen2) decode with the lean step (lm/decode.py: fused weights,
~15 ops a layer) over a static cache (lm/rollout.py): eager on a CPU, CUDA graphs on a GPU. The
decoder and its weight copies persist per model and are refreshed before a call whenever the
model's parameters changed (`refresh_sampler(model)` forces it, for changes the version counters do
not see). Other models decode through their own forward, with a preallocated cache
(`PreallocatedLayer`) and finished sequences leaving the batch.
"""
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import lm.draw as drawing
from lm.decode import LeanDecoder, compute_dtype
from lm.draw import row_keys
from lm.logprobs import linear_head
from lm.rollout import Rollout


@dataclass
class Samples:
    prompt_ids: torch.Tensor       # (N, P) left-padded
    prompt_mask: torch.Tensor      # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor   # (N, T) padded after the first EOS
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the first EOS
    truncated: torch.Tensor        # (N,) bool: no EOS within max_new_tokens
    sampler_logp: torch.Tensor     # (N, T) float32 log-prob of each drawn token under the distribution
                                   # drawn from (temperature, top-k, top-p); 0 after the first EOS


class PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in a buffer of `capacity` positions: `update` writes the new columns in
    place and returns views of the filled part (no copy of the cache per step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        n, heads, length, dim = keys.shape
        self.buffers = [keys.new_empty(n, heads, capacity, dim), values.new_empty(n, heads, capacity, dim)]
        self.buffers[0][:, :, :length], self.buffers[1][:, :, :length] = keys, values
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.length = length
        self._expose()

    def _expose(self):
        self.keys, self.values = (b[:, :, :self.length] for b in self.buffers)

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        self.buffers[0][:, :, self.length:self.length + new] = key_states
        self.buffers[1][:, :, self.length:self.length + new] = value_states
        self.length += new
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buffers = [b[indices] for b in self.buffers]
        self._expose()


def left_pad(sequences: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (len(sequences), longest), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def completion_mask_from(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, truncated) for (N, T) completion ids: the mask keeps tokens up to the first EOS."""
    is_eos = ids == eos_id                                                        # (N, T)
    # number of EOS strictly before each position; a token is kept while that number is 0
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()
    mask = (eos_before == 0).long()
    truncated = ~is_eos.any(-1)
    return mask, truncated


def last_logits(model, **inputs) -> torch.Tensor:
    """(N, V) next-token logits from the last position: the body, then the output layer as
    (W @ h.T).T, which on a CPU runs a skinny (few rows) product about twice as fast as h @ W.T.
    Assumes a plain linear output layer (Llama, Qwen, SmolLM); other heads go through the model."""
    head = linear_head(model)
    if head is None:
        return model(**inputs, logits_to_keep=1).logits[:, -1]
    hidden = model.base_model(**inputs).last_hidden_state[:, -1]                  # (N, H)
    logits = (head.weight @ hidden.T).T                                           # (N, V)
    return logits + head.bias if head.bias is not None else logits


_decoders: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lean_decoder(model) -> LeanDecoder | None:
    """The model's persistent lean decoder (None for models it does not cover), rebuilt when the
    compute dtype changed and refreshed when the model's weights changed since its last use."""
    if not LeanDecoder.supports(model):
        return None
    decoder = _decoders.get(model)
    if decoder is None or decoder.dtype != compute_dtype(model) or decoder.model.device != model.device:
        decoder = _decoders[model] = LeanDecoder(model)
    elif decoder.stale():
        decoder.refresh()
    return decoder


def refresh_sampler(model) -> None:
    """The weight-refresh hook: write the model's weights into the sampler's copies now (for changes
    that do not move the parameters' version counters, such as merged adapters)."""
    if model in _decoders:
        _decoders[model].refresh()


@torch.no_grad()
def sample(model, prompts: list[list[int]], *, group_size: int = 1, max_new_tokens: int = 128,
           temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, eos_token_id: int,
           pad_token_id: int | None = None, generator: torch.Generator | None = None,
           keys: torch.Tensor | list[int] | None = None, drop_finished: bool = True, lean: bool = True,
           cuda_graphs: bool | None = None) -> Samples:
    """Sample `group_size` completions for each tokenised prompt (see the module docstring).
    `keys`: one random key per prompt (else drawn from `generator`); `drop_finished=False` keeps
    finished sequences in the batch (same tokens, more compute); `lean=False` decodes through the
    model's own forward; `cuda_graphs` (default: on a GPU) replays the lean step as CUDA graphs."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("sample() needs at least one prompt and no empty prompt")
    device = next(model.parameters()).device
    pad_id = eos_token_id if pad_token_id is None else pad_token_id
    G, T = group_size, max_new_tokens
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)                  # (B, P)
    B, P = prompt_ids.shape
    if keys is None:
        gen_device = generator.device if generator is not None else "cpu"
        keys = torch.randint(0, 2 ** 31, (B,), generator=generator, device=gen_device)
    keys = row_keys(torch.as_tensor(keys, dtype=torch.int64).to(device), G)     # (N,)
    settings = (temperature, top_k, top_p, eos_token_id, pad_id)

    # Prefill once per prompt; the first token comes from its logits.
    cache = DynamicCache(config=model.config)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)                        # (B, P)
    logits = last_logits(model, input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True).repeat_interleave(G, 0)   # (N, V)
    first, first_logp = drawing.draw(logits, keys, 0, temperature, top_k, top_p)   # (N,), (N,)
    decoder = lean_decoder(model) if lean and T > 1 else None
    if decoder is not None:
        ids, logp = static_decode(decoder, cache, prompt_mask, positions, first, first_logp, keys, G, T,
                                  settings, drop_finished, device.type == "cuda" if cuda_graphs is None else cuda_graphs)
    else:
        ids, logp = forward_decode(model, cache, prompt_mask, positions, first, first_logp, keys, G, T,
                                   settings, drop_finished)
    mask, truncated = completion_mask_from(ids, eos_token_id)
    width = int(mask.sum(-1).max())  # columns after every completion's end hold only padding
    prompt_mask = prompt_mask.repeat_interleave(G, 0)
    return Samples(prompt_ids.repeat_interleave(G, 0), prompt_mask, ids[:, :width], mask[:, :width], truncated,
                   logp[:, :width])


_rollouts: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_decode(decoder, cache, prompt_mask, positions, first, first_logp, keys, G, T, settings,
                  drop_finished, graphs) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids and log-probs from the lean step over a static cache (lm/rollout.py). With graphs,
    the rollout (and its captured graphs) is kept for the next call of the same shape, its cache
    rounded up to 256 columns so that prompts of other lengths reuse it; one rollout a model: a call
    of another shape (an evaluation between training steps) frees the kept one and its cache first."""
    N, P = len(keys), prompt_mask.shape[1]
    capacity = -(-(P + T) // 256) * 256 if graphs else P + T
    if graphs:
        kept = _rollouts.setdefault(decoder, {})
        fits = [r for (n, t, c), r in kept.items() if n == N and t == T and c >= P + T]
        if not fits:
            kept.clear()
            torch.cuda.empty_cache()  # the old cache's memory back before the new one is allocated
        rollout = fits[0] if fits else kept.setdefault((N, T, capacity), Rollout(decoder, N, T, capacity, True))
    else:
        rollout = Rollout(decoder, N, T, capacity, False)
    row_of = torch.arange(N, device=keys.device) // G
    rollout.start(cache.layers, prompt_mask, row_of, first, first_logp, positions[row_of, -1], keys, settings)
    rollout.run(decoder, settings, drop_finished)
    return rollout.out_ids.clone(), rollout.out_logp.clone()


def forward_decode(model, cache, prompt_mask, positions, first, first_logp, keys, G, T, settings,
                   drop_finished) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids and log-probs, each step through the model's own forward (models the lean step does
    not cover): a preallocated cache, finished sequences leave the batch once a quarter finished."""
    temperature, top_k, top_p, eos_id, pad_id = settings
    N, P = len(keys), prompt_mask.shape[1]
    device = keys.device
    if G > 1:
        cache.batch_repeat_interleave(G)
    cache.layers = [PreallocatedLayer(layer.keys, layer.values, P + T) for layer in cache.layers]
    attention = torch.ones((N, P + T), dtype=torch.long, device=device)         # preallocated
    attention[:, :P] = prompt_mask.repeat_interleave(G, 0)
    position = positions[:, -1:].repeat_interleave(G, 0)                         # (N, 1)
    ids = torch.full((N, T), pad_id, dtype=torch.long, device=device)
    logp = torch.zeros((N, T), dtype=torch.float32, device=device)
    ids[:, 0], logp[:, 0] = first, first_logp
    running = torch.arange(N, device=device)   # rows of `ids` still in the batch, in batch order
    finished = first == eos_id                                                    # over the batch rows
    for t in range(1, T):
        if finished.all():
            break
        if drop_finished and finished.sum() * 4 >= len(running):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            running, finished, position, attention = running[keep], finished[keep], position[keep], attention[keep]
        position = position + 1
        logits = last_logits(model, input_ids=ids[running, t - 1:t], attention_mask=attention[:, :P + t],
                             position_ids=position, past_key_values=cache, use_cache=True)   # (n, V)
        token, token_logp = drawing.draw(logits, keys[running], t, temperature, top_k, top_p)
        ids[running, t] = torch.where(finished, pad_id, token)
        logp[running, t] = token_logp.masked_fill(finished, 0.0)
        finished |= token == eos_id
    return ids, logp


@torch.no_grad()
def stream(model, prompt: list[int], *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
           top_k: int = 0, eos_token_id: int, key: int = 0):
    """Yield the token ids of one completion as they are drawn (a chat that prints as it goes), through
    the model's forward with a KV cache; stops after EOS (not yielded) or `max_new_tokens`. The draw is
    `sample`'s (the same filter and keyed random numbers: the same tokens for the same key)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=model.config)
    keys = row_keys(torch.tensor([key], dtype=torch.int64, device=device), 1)
    positions = torch.arange(len(prompt), device=device)[None]                    # (1, P), then (1, 1)
    for t in range(max_new_tokens):
        logits = last_logits(model, input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
        token = drawing.draw(logits, keys, t, temperature, top_k, top_p)[0]      # (1,)
        if token.item() == eos_token_id:
            return
        yield token.item()
        ids, positions = token.view(1, 1), positions[:, -1:] + 1
