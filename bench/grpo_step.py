"""Time one GRPO step by phase on the built-in model, and our sampler against HF `generate`.

    .venv/bin/python bench/grpo_step.py [--steps 3] [--group-size 8] [--new-tokens 128] [--no-trl]

Config (issue 5): 1 prompt x G = 8, 128 new tokens (EOS suppressed so every sequence runs the
full budget), beta 0.04 (so the reference forward is timed), float32, one update per batch.
Phases: sampling, reference forward, policy forward+backward, optimizer step. Prints the median
over --steps steps, then decode-step latency and tokens/s of our sampler and of HF generate on
the same prompt batch. Then, side by side, TRL 1.16's GRPOTrainer on the identical config (every
completion forced to the full budget with min_new_tokens), once with its defaults (gradient
checkpointing on) and once with it off: median seconds per step and in `generate`. TRL runs in its own
virtual environment (.venv-trl, created on first use by bench/trl_env.py).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trl_env import run_child  # noqa: E402
from grpo.loss import grpo_loss  # noqa: E402
from lm import load_model, sample, token_logprobs  # noqa: E402
from lm.chat import encode_prompt, prompt_messages  # noqa: E402
from lm.loading import BUILTIN, builtin_model_dir  # noqa: E402

PROBLEM = "What is 12 * (7 + 8) - 9?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=BUILTIN)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype="float32")
    ref = load_model(args.model, dtype="float32")[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    prompt = encode_prompt(tok, PROBLEM)
    G, T = args.group_size, args.new_tokens
    never = -1  # an id no token has: every completion runs the full budget, as a worst case
    phases = {k: [] for k in ("sampling", "reference forward", "policy forward+backward", "optimizer", "step")}
    for _ in range(args.steps):
        t0 = time.perf_counter()
        s = sample(model, [prompt], group_size=G, max_new_tokens=T, temperature=1.0, eos_token_id=never,
                   pad_token_id=tok.pad_token_id)
        t1 = time.perf_counter()
        with torch.no_grad():
            ref_logp, _ = token_logprobs(ref, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)
        t2 = time.perf_counter()
        logp, _ = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask)
        adv = torch.randn(G)
        loss, _ = grpo_loss(logp, logp.detach(), ref_logp, adv, s.completion_mask, beta=0.04)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[key].append(value)
    print(f"one GRPO step, {args.model}, 1 prompt x G={G}, {T} new tokens, beta 0.04, float32, "
          f"{torch.get_num_threads()} threads (median of {args.steps}):")
    for key, values in phases.items():
        print(f"  {key:<26} {statistics.median(values):7.2f} s")

    ids = torch.tensor([prompt] * G)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=T, min_new_tokens=T,
                       do_sample=True, pad_token_id=tok.pad_token_id)
        hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    sample(model, [prompt], group_size=G, max_new_tokens=T, temperature=1.0, eos_token_id=never)
    ours = time.perf_counter() - t0
    print(f"sampling {G} x {T} tokens: ours {ours:.2f} s ({1000 * ours / T:.0f} ms/step, {G * T / ours:.0f} tok/s), "
          f"HF generate {hf:.2f} s ({1000 * hf / T:.0f} ms/step, {G * T / hf:.0f} tok/s)", flush=True)
    if args.no_trl:
        return
    path = builtin_model_dir() if args.model == BUILTIN else args.model
    ours_step = statistics.median(phases["step"])
    # one warm-up step more than ours: TRL's first step also builds its dataloader and optimizer
    for gc in ("default", "off"):
        out = json.loads(run_child("trl_grpo.py", "--model", str(path), "--prompt", json.dumps(prompt_messages(PROBLEM)),
                                   "--group-size", str(G), "--new-tokens", str(T), "--steps", str(args.steps + 1),
                                   "--gradient-checkpointing", gc).strip().splitlines()[-1])
        step, gen = statistics.median(out["seconds"][1:]), statistics.median(out["generate"][1:])
        print(f"TRL GRPOTrainer, gradient checkpointing {'on' if out['gradient_checkpointing'] else 'off'}: "
              f"step {step:.2f} s (generate {gen:.2f} s), median of {len(out['seconds']) - 1}; "
              f"ours {ours_step:.2f} s = {ours_step / step:.2f} of TRL's time", flush=True)


if __name__ == "__main__":
    main()
