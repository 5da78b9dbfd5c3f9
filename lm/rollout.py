"""The decoding loop with static shapes: eager on a CPU, one CUDA graph per batch-size bucket on a GPU.

Shapes: N completions, T new tokens, C cache capacity (>= prompt width P + T), V vocabulary.

State, on the device, allocated once per rollout shape (and kept between calls on a GPU, where the
graphs read it by address):
    rows (N,)        the completion each row holds (running rows are moved into a prefix)
    tokens (N,)      the token the next step feeds;  position (N,): its position
    finished (N,)    the row has drawn its EOS
    uniforms (N, T)  the random numbers its tokens are drawn with, from its key (lm/draw.py) at the start
    t ()             the index of the token the next step draws;  base (): the prompt width P
    out_ids (N, T), out_logp (N, T)   what each completion drew and its log-prob (pad and 0 after EOS)
One step, for the first n rows (no value goes back to the host, so the step can be captured):
    logits = decoder.step(tokens, position, cache, column = base + t - 1)          (n, V)
    token, logp = draw(logits, uniforms[:, t]); finished rows get pad and 0
    out_ids[rows, t] = token; finished |= token == eos; tokens = token; position += 1; t += 1
Every `check_every` steps the host asks how many rows still run (on a GPU through a non-blocking
copy that it reads at the next check, so it never waits for the GPU): none ends the loop; few enough
moves the running rows into the prefix of the next smaller bucket (padded with finished rows, which
draw pad) and decoding goes on with that bucket's graph. On a CPU every step checks and the batch
shrinks to the running rows exactly once a quarter of them finished (syncs cost nothing there).
Attention reads the cache's filled columns only: eagerly the first P + t, in a graph the first P + t
rounded up to LENGTH_BUCKET (one graph per bucket of rows and of length), so that a long completion
does not pay for its whole cache from its first token.
"""
import torch

import lm.draw as drawing

GRAPH_CHECK_EVERY = 8
EAGER_BUCKETS = False  # True: eager decoding follows the GPU's policy (buckets, a check every few steps)
LENGTH_BUCKET = 512    # graphs attend over the filled cache rounded up to this many columns


def buckets_for(N: int) -> list[int]:
    """Batch sizes that get a graph: N, N/2, N/4, ... (rounded up), down to 1."""
    sizes = [N]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class Rollout:
    """Static decoding state for N completions of up to T tokens with a cache of `capacity` columns."""

    def __init__(self, decoder, N: int, T: int, capacity: int, graphs: bool):
        device = decoder.model.device
        self.N, self.T, self.graphs = N, T, graphs
        self.cache = decoder.new_cache(N, capacity)
        zeros = lambda dtype: torch.zeros(N, dtype=dtype, device=device)
        self.rows, self.tokens, self.position = zeros(torch.int64), zeros(torch.int64), zeros(torch.int64)
        self.finished = zeros(torch.bool)
        self.t, self.base = torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64,
                                                                                        device=device)
        self.out_ids = torch.zeros((N, T), dtype=torch.int64, device=device)
        self.out_logp = torch.zeros((N, T), dtype=torch.float32, device=device)
        self.uniforms = torch.zeros((N, T), dtype=torch.float64, device=device)  # row i's draw of token t
        self.captured: dict = {}          # (rows, sampling settings) -> torch.cuda.CUDAGraph
        self.pool = torch.cuda.graph_pool_handle() if graphs else None

    def per_row(self) -> list[torch.Tensor]:
        """The state tensors with one entry per row (what compaction moves)."""
        return [self.rows, self.tokens, self.position, self.finished, self.uniforms, *self.cache.buffers()]

    def state(self) -> list[torch.Tensor]:
        return [*self.per_row(), self.t, self.base, self.out_ids, self.out_logp]

    def start(self, prefill_layers, prompt_mask, row_of, first_token, first_logp, last_position, keys, settings):
        """Load a prefill and the first drawn token (from the prefill's logits) into the state."""
        eos_id, pad_id = settings[3:]
        N = len(row_of)
        self.cache.load(prefill_layers, prompt_mask, row_of)
        self.rows.copy_(torch.arange(N, device=self.rows.device))
        self.uniforms.copy_(drawing.uniform(keys[:, None], torch.arange(self.T, device=keys.device)))
        self.out_ids.fill_(pad_id)
        self.out_logp.zero_()
        self.out_ids[:, 0], self.out_logp[:, 0] = first_token, first_logp
        self.tokens.copy_(first_token)
        self.finished.copy_(first_token == eos_id)
        self.position.copy_(last_position + 1)
        self.t.fill_(1)
        self.base.fill_(prompt_mask.shape[1])

    def step(self, decoder, n: int, settings: tuple, window: int | None) -> None:
        temperature, top_k, top_p, eos_id, pad_id = settings
        logits = decoder.step(self.tokens[:n], self.position[:n], self.cache, self.base + self.t - 1, n, window)
        u = self.uniforms[:n].index_select(1, self.t.view(1))                                  # (n, 1)
        token, logp = drawing.draw(logits, None, self.t, temperature, top_k, top_p, u)  # (n,), (n,)
        finished = self.finished[:n]
        token = torch.where(finished, pad_id, token)
        logp = logp.masked_fill(finished, 0.0)
        where = (self.rows[:n], self.t.expand(n))
        self.out_ids.index_put_(where, token)
        self.out_logp.index_put_(where, logp)
        finished |= token == eos_id
        self.tokens[:n] = token
        self.position[:n] += 1
        self.t += 1

    def window(self, filled: int, buckets: bool) -> int:
        """The cache columns a step attends over: the filled ones, or (buckets) that many rounded up to
        LENGTH_BUCKET, at most the cache's capacity."""
        return min(self.cache.capacity, -(-filled // LENGTH_BUCKET) * LENGTH_BUCKET) if buckets else filled

    def graph_step(self, decoder, n: int, settings: tuple, window: int) -> None:
        """The step for n rows attending over `window` cache columns as a CUDA graph, captured on first
        use (the warm-up runs change the state, so it is put back before the first replay)."""
        key = (n, window, settings)
        if key not in self.captured:
            saved = [x.clone() for x in self.state()]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.step(decoder, n, settings, window)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.step(decoder, n, settings, window)
            for x, value in zip(self.state(), saved):
                x.copy_(value)
            self.captured[key] = graph
        self.captured[key].replay()

    def keep_first(self, n: int, b: int) -> None:
        """Move the running rows (then finished ones) into the first b rows of every state tensor."""
        order = torch.argsort(self.finished[:n].to(torch.uint8), stable=True)[:b]  # running rows first
        for x in self.per_row():
            x[:b] = x[:n][order]

    def run(self, decoder, settings: tuple, drop_finished: bool) -> None:
        """Decode tokens 1..T-1 (token 0 came from the prefill)."""
        n, P = self.N, int(self.base)
        gpu_policy = self.graphs or EAGER_BUCKETS
        sizes = buckets_for(self.N) if gpu_policy else None
        check_every = GRAPH_CHECK_EVERY if gpu_policy else 1
        pending = None  # on a GPU: (pinned host count, event) of the last check
        for s in range(1, self.T):
            if (s - 1) % check_every == 0:
                count = (~self.finished[:n]).sum()
                if self.graphs:
                    seen, pending = pending, (torch.empty((), dtype=torch.int64, pin_memory=True), torch.cuda.Event())
                    pending[0].copy_(count, non_blocking=True)
                    pending[1].record()
                    running = None if seen is None else (seen[1].synchronize(), int(seen[0]))[1]
                else:
                    running = int(count)
                if running == 0:
                    break
                if drop_finished and running is not None and running * 4 <= 3 * n:
                    b = running if sizes is None else min(x for x in sizes if x >= running)
                    if b < n:
                        self.keep_first(n, b)
                        n = b
            window = self.window(P + s, gpu_policy)  # token s's column is P + s - 1
            if self.graphs:
                self.graph_step(decoder, n, settings, window)
            else:
                self.step(decoder, n, settings, window)
