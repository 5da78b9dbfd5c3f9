"""Time one GRPO step by phase on the built-in model, and our sampler against HF `generate`.

    .venv/bin/python bench/grpo_step.py [--steps 3] [--group-size 8] [--new-tokens 128] [--no-trl]
        [--prompts 1] [--device cuda --dtype bfloat16] [--random-weights]

Config (issue 5): 1 prompt x G = 8, 128 new tokens (EOS suppressed so every sequence runs the
full budget), beta 0.04 (so the reference forward is timed), float32, one update per batch.
Phases: sampling, reference forward, policy forward+backward, optimizer step. Prints the median
over --steps steps, then decode-step latency and tokens/s of our sampler (its lean decoding step,
then the model's own forward, lm/decode.py) and of HF generate on the same prompt batch. Then, side
by side, TRL 1.16's GRPOTrainer on the identical config (every completion forced to the full budget
with min_new_tokens), once with its defaults (gradient checkpointing on) and once with it off: median
seconds per step and in `generate`. TRL runs in its own
virtual environment (.venv-trl, created on first use by bench/trl_env.py; or the python named by
$TRL_PYTHON, as on a GPU machine with no package index).

`--random-weights` keeps the model's config and tokenizer but initialises the weights at random
(seeded) and saves them to a temporary folder that both sides load: timings do not depend on the
weights (EOS is suppressed), so a machine that only has the config can run the benchmark.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trl_env import run_child  # noqa: E402
from common.optim import make_optimizer  # noqa: E402
from grpo.loss import grpo_loss  # noqa: E402
from lm import load_model, sample, token_logprobs  # noqa: E402
from lm.chat import encode_prompt, prompt_messages  # noqa: E402
from lm.loading import BUILTIN, builtin_model_dir, resolve_device  # noqa: E402

PROBLEM = "What is 12 * (7 + 8) - 9?"


def random_copy(model_dir: str) -> str:
    """A folder with the config and tokenizer of `model_dir` and seeded random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    out = tempfile.mkdtemp(prefix="random-weights-")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=BUILTIN)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step, B")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--random-weights", action="store_true", help="the model's shape, random weights")
    parser.add_argument("--no-share-prompts", action="store_true", help="run each prompt copy in the forwards")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--trl-checkpointing", default="default,off", help="TRL runs: default, on, off (comma-separated)")
    args = parser.parse_args()
    path = str(builtin_model_dir()) if args.model == BUILTIN else args.model
    if args.random_weights:
        path = random_copy(path)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = lambda: (sync(), time.perf_counter())[1]
    torch.manual_seed(0)
    model, tok = load_model(path, dtype=args.dtype, device=args.device)
    ref = load_model(path, dtype=args.dtype, device=args.device)[0].requires_grad_(False)
    optimizer = make_optimizer(model, 1e-6)
    prompts = [encode_prompt(tok, PROBLEM)] * args.prompts
    B, G, T = args.prompts, args.group_size, args.new_tokens
    share = not args.no_share_prompts
    never = -1  # an id no token has: every completion runs the full budget, as a worst case
    phases = {k: [] for k in ("sampling", "reference forward", "policy forward+backward", "optimizer", "step")}
    for _ in range(args.steps):
        t0 = clock()
        s = sample(model, prompts, group_size=G, max_new_tokens=T, temperature=1.0, eos_token_id=never,
                   pad_token_id=tok.pad_token_id)
        t1 = clock()
        with torch.no_grad():
            ref_logp, _ = token_logprobs(ref, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                         share_prompts=share)
        t2 = clock()
        logp, _ = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                 share_prompts=share)
        adv = torch.randn(B * G, device=device)
        loss, _ = grpo_loss(logp, logp.detach(), ref_logp, adv, s.completion_mask, beta=0.04)
        loss.backward()
        t3 = clock()
        optimizer.step()
        optimizer.zero_grad()
        t4 = clock()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[key].append(value)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"one GRPO step, {args.model}{' (random weights)' * args.random_weights}, {B} prompt(s) x G={G}, "
          f"{T} new tokens, beta 0.04, {args.dtype}, {where}, prompts shared: {share} (median of {args.steps}; first step included):")
    for key, values in phases.items():
        print(f"  {key:<26} {statistics.median(values):7.2f} s")

    ids = torch.tensor([p for p in prompts for _ in range(G)], device=device)
    with torch.no_grad():
        t0 = clock()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=T, min_new_tokens=T,
                       do_sample=True, pad_token_id=tok.pad_token_id)
        hf = clock() - t0
    timings = {}
    for lean in (True, False):
        t0 = clock()
        sample(model, prompts, group_size=G, max_new_tokens=T, temperature=1.0, eos_token_id=never, lean=lean)
        timings[lean] = clock() - t0
    n = B * G
    rate = lambda seconds: f"{seconds:.2f} s ({1000 * seconds / T:.1f} ms/step, {n * T / seconds:.0f} tok/s)"
    print(f"sampling {n} x {T} tokens: ours {rate(timings[True])}, ours through the model's forward "
          f"{rate(timings[False])}, HF generate {rate(hf)}", flush=True)
    if args.no_trl:
        return
    ours_step = statistics.median(phases["step"])
    # one warm-up step more than ours: TRL's first step also builds its dataloader and optimizer
    for gc in args.trl_checkpointing.split(","):
        out = json.loads(run_child("trl_grpo.py", "--model", path, "--prompt", json.dumps(prompt_messages(PROBLEM)),
                                   "--prompts", str(B), "--group-size", str(G), "--new-tokens", str(T),
                                   "--steps", str(args.steps + 1), "--gradient-checkpointing", gc,
                                   "--device", device.type, "--dtype", args.dtype).strip().splitlines()[-1])
        step, gen = statistics.median(out["seconds"][1:]), statistics.median(out["generate"][1:])
        print(f"TRL GRPOTrainer, gradient checkpointing {'on' if out['gradient_checkpointing'] else 'off'}: "
              f"step {step:.2f} s (generate {gen:.2f} s), median of {len(out['seconds']) - 1}; "
              f"ours {ours_step:.2f} s = {ours_step / step:.2f} of TRL's time", flush=True)


if __name__ == "__main__":
    main()
