"""`run.py grpo` with the random numbers of the sampler before keyed sampling (commit 5c52b8a and
earlier): one torch.Generator seeded with the run's --seed, and u ~ rand((n, 1)) drawn for the n rows
in the decoding batch at every step, the first token's included. Everything else is today's code.

Issue 27 asked why the demo's GRPO stage gained on held-out problems before commit bda7ad4 and did not
after. Run this and the old tree with the same flags, and compare their metrics.jsonl line by line:

    git worktree add /tmp/old 5c52b8a
    (cd /tmp/old && python run.py grpo --seed 1 --max-steps 6 ... --output-dir /tmp/old-s1)
    python bench/generator_draws.py grpo --seed 1 --max-steps 6 ... --output-dir runs/generator-s1

Measured (2-core CPU, the demo's GRPO flags from its SFT checkpoint, seed 1, 6 steps): every step's
accuracy, format, completion length, entropy and gradient norm (0.30382, 0.09944, 0.21872, 0.24558,
0.34544) equal the old tree's. The sampler's distribution and the update are the old ones; the two
trees differ only in which random numbers draw the samples (lm/draw.py's keyed hash instead of this
stream). The outcome of a 19-step GRPO run depends on that draw: docs/demo-seeds.md.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lm.draw as drawing  # noqa: E402
import run  # noqa: E402

_plain_draw = drawing.draw
_generator: dict = {}


def generator_draw(logits, keys, t, temperature, top_k=0, top_p=1.0, u=None):
    """lm.draw.draw with u taken from the run's torch.Generator instead of the keyed hash."""
    if temperature == 0:
        return _plain_draw(logits, keys, t, temperature, top_k, top_p, u)
    g = _generator.setdefault("g", torch.Generator(device=logits.device).manual_seed(_generator["seed"]))
    u = torch.rand((logits.shape[0], 1), generator=g, dtype=torch.float64, device=logits.device)
    return _plain_draw(logits, None, t, temperature, top_k, top_p, u)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] != ["grpo"]:
        sys.exit("usage: python bench/generator_draws.py grpo [run.py grpo flags]")
    _generator["seed"] = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    drawing.draw = generator_draw  # the sampler's prefill and every decoding step call lm.draw.draw
    sys.exit(run.main(argv))
