"""Time one GRPO step by phase, the sampler's decoding step, and TRL's GRPOTrainer on the same config.

    .venv/bin/python bench/grpo_step.py [--steps 3] [--device cuda] [--dtype auto] [--random-weights]
        [--decode-rows 8,64] [--qwen-shaped] [--no-trl]

1. One GRPO step of B prompts x G = 8, 128 new tokens (EOS suppressed: every sequence runs the full
   budget), beta 0.04 (so the reference forward is timed), one update, in the training loop's
   precision (`--dtype auto`: float32 on a CPU, float32 master weights with bfloat16 compute on a
   GPU): sampling, reference forward, policy forward+backward, optimizer step; medians of --steps.
2. The decoding step: milliseconds per token for each --decode-rows (our sampler; for the first size
   also through the model's own forward and HF `generate`).
3. --qwen-shaped: a model shaped like Qwen2.5-0.5B-Instruct (its config is written out below, random
   weights, vocabulary 151,936): its decoding step for 8 rows, and a GRPO step of 8 prompts x 8 x 512
   tokens with beta 0.04 (time per phase and peak GPU memory).
4. TRL 1.16's GRPOTrainer on the config of 1 (every completion forced to the full budget with
   min_new_tokens), with its default gradient checkpointing and without: seconds per step and in
   `generate`. TRL runs in its own virtual environment (.venv-trl, made on first use by
   bench/trl_env.py; or the python $TRL_PYTHON names, as on a GPU machine with no package index).
A table of the figures closes the output.

`--random-weights` keeps the model's config and tokenizer but initialises the weights at random
(seeded) into a temporary folder that both sides load: timings do not depend on the weights (EOS is
suppressed), so a machine that has only the config and tokenizer (bench/gpu_check.sh) can run it.
"""
import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lm.decode  # noqa: E402
from bench.trl_env import run_child  # noqa: E402
from common.optim import make_optimizer  # noqa: E402
from common.runlog import phase_clock  # noqa: E402
from grpo.loss import grpo_loss  # noqa: E402
from lm import load_model, sample, token_logprobs  # noqa: E402
from lm.chat import encode_prompt, prompt_messages  # noqa: E402
from lm.loading import BUILTIN, builtin_model_dir, resolve_device  # noqa: E402
from lm.precision import resolve_precision  # noqa: E402
from lm.sampling import refresh_sampler  # noqa: E402

PROBLEM = "What is 12 * (7 + 8) - 9?"
NEVER = -1  # an EOS id no token has: every completion runs the full budget, as a worst case
QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B-Instruct's config.json, the fields that shape the compute
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
    num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)


def random_copy(model_dir: str) -> str:
    """A folder with the config and tokenizer of `model_dir` and seeded random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    out = tempfile.mkdtemp(prefix="random-weights-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # half a GB a run otherwise stays in /tmp
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def grpo_phases(model, ref, optimizer, precision, prompts, G, T, steps, clock, share=True, graphs=None) -> dict:
    """Median seconds per phase of `steps` GRPO steps (the training loop's calls, in its precision)."""
    phases = {k: [] for k in ("sampling", "reference forward", "policy forward+backward", "optimizer", "step")}
    for _ in range(steps):
        t0 = clock()
        with precision.autocast():
            s = sample(model, prompts, group_size=G, max_new_tokens=T, temperature=1.0, eos_token_id=NEVER,
                       pad_token_id=0, cuda_graphs=graphs)
        t1 = clock()
        with torch.no_grad(), precision.autocast():
            ref_logp, _ = token_logprobs(ref, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                         share_prompts=share)
        t2 = clock()
        with precision.autocast():
            logp, _ = token_logprobs(model, s.prompt_ids, s.prompt_mask, s.completion_ids, s.completion_mask,
                                     share_prompts=share)
        adv = torch.randn(len(logp), device=logp.device)
        loss, _ = grpo_loss(logp, logp.detach(), ref_logp, adv, s.completion_mask, beta=0.04)
        loss.backward()
        t3 = clock()
        optimizer.step()
        optimizer.zero_grad()
        t4 = clock()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            phases[key].append(value)
    return {k: statistics.median(v) for k, v in phases.items()}


def decode_ms(model, precision, prompts, rows, T, clock, **kw) -> float:
    """Milliseconds per decoding step: a full rollout of `rows` completions of T tokens, divided by T
    (the prefill included), after one warm-up rollout (which also captures CUDA graphs)."""
    times = []
    for _ in range(3):
        refresh_sampler(model)  # as after an optimizer step
        t0 = clock()
        with precision.autocast():
            sample(model, prompts, group_size=rows, max_new_tokens=T, temperature=1.0, eos_token_id=NEVER,
                   pad_token_id=0, **kw)
        times.append(clock() - t0)
    return 1000 * statistics.median(times[1:]) / T


def kernels_per_step(model, precision, prompts, rows, T=17) -> str:
    """GPU kernels (and copies) one eager lean decoding step launches, counted by torch.profiler over a
    rollout of T tokens (the prefill and the first draw are in it too, so this slightly overcounts)."""
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with precision.autocast():
                sample(model, prompts, group_size=rows, max_new_tokens=T, temperature=1.0, eos_token_id=NEVER,
                       pad_token_id=0, cuda_graphs=False)
            torch.cuda.synchronize()
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception as error:  # the profiler is an extra: never the reason the benchmark fails
        return f"profiler failed: {type(error).__name__}"
    layers = model.config.num_hidden_layers
    return f"{kernels / (T - 1):.0f} kernels a step, {kernels / (T - 1) / layers:.1f} a layer"


def qwen_shaped(args, device, clock, table: list) -> None:
    """Decoding step (8 rows) and a GRPO step of 8 x 8 x 512 with beta 0.04 on a Qwen2.5-0.5B-shaped model."""
    from transformers import AutoModelForCausalLM, Qwen2Config
    precision = resolve_precision(args.dtype, device)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B), dtype=torch.float32).to(device, precision.weights)
    ref = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_05B), dtype=torch.float32).to(device, precision.compute)
    ref.requires_grad_(False)
    optimizer = make_optimizer(model, 1e-6)
    print(f"Qwen2.5-0.5B-shaped model: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"weights {precision.weights}, compute {precision.compute}", flush=True)
    one = [torch.randint(200, 150000, (128,), generator=torch.Generator().manual_seed(0)).tolist()]
    ms = decode_ms(model, precision, one, 8, 128, clock, cuda_graphs=args.graphs)
    table.append(("decoding step, Qwen2.5-0.5B-shaped, 8 rows", f"{ms:.2f} ms"))
    prompts = [torch.randint(200, 150000, (128,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(8)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phases = grpo_phases(model, ref, optimizer, precision, prompts, 8, args.qwen_new_tokens, args.steps, clock,
                         graphs=args.graphs)
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if device.type == "cuda" else ""
    text = ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
    table.append((f"GRPO step, Qwen2.5-0.5B-shaped, 8 prompts x 8 x {args.qwen_new_tokens}, beta 0.04", text + peak))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=BUILTIN)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step, B")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="as run.py grpo's --dtype (auto: mixed on a GPU)")
    parser.add_argument("--random-weights", action="store_true", help="the model's shape, random weights")
    parser.add_argument("--no-share-prompts", action="store_true", help="run each prompt copy in the forwards")
    parser.add_argument("--decode-rows", default="8", help="comma-separated batch sizes for the decoding step")
    parser.add_argument("--qwen-shaped", action="store_true", help="also the Qwen2.5-0.5B-shaped model")
    parser.add_argument("--qwen-new-tokens", type=int, default=512)
    parser.add_argument("--no-cuda-graphs", dest="graphs", action="store_const", const=False, default=None,
                        help="on a GPU, decode eagerly (the lean step without CUDA graphs)")
    parser.add_argument("--no-compile-decoder", action="store_true",
                        help="on a GPU, run the lean step's layers uncompiled (lm.decode.COMPILE_ON_CUDA off)")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--trl-checkpointing", default="default,off", help="TRL runs: default, on, off (comma-separated)")
    args = parser.parse_args()
    lm.decode.COMPILE_ON_CUDA = not args.no_compile_decoder
    path = str(builtin_model_dir()) if args.model == BUILTIN else args.model
    if args.random_weights:
        path = random_copy(path)
    device = resolve_device(args.device)
    clock = phase_clock(device)
    precision = resolve_precision(args.dtype, device)
    torch.manual_seed(0)
    model, tok = load_model(path, dtype=args.dtype, device=args.device, training=True)
    ref = load_model(path, dtype=args.dtype, device=args.device)[0].requires_grad_(False)
    optimizer = make_optimizer(model, 1e-6)
    prompts = [encode_prompt(tok, PROBLEM)] * args.prompts
    B, G, T = args.prompts, args.group_size, args.new_tokens
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    mode = f"weights {precision.weights}, compute {precision.compute}"
    if device.type == "cuda":
        mode += f", lean step {'compiled' if lm.decode.COMPILE_ON_CUDA else 'not compiled'}"
    phases = grpo_phases(model, ref, optimizer, precision, prompts, G, T, args.steps, clock, not args.no_share_prompts,
                         args.graphs)
    print(f"one GRPO step, {args.model}{' (random weights)' * args.random_weights}, {B} prompt(s) x G={G}, "
          f"{T} new tokens, beta 0.04, {mode}, {where} (median of {args.steps}; first step included):")
    for key, value in phases.items():
        print(f"  {key:<26} {value:7.2f} s")
    table = [(f"GRPO step {B} x {G} x {T}, beta 0.04, ours", f"{phases['step']:.2f} s")]

    sizes = [int(x) for x in args.decode_rows.split(",")]
    graphed = device.type == "cuda" and args.graphs is not False
    for rows in sizes:
        ms = decode_ms(model, precision, prompts[:1], rows, T, clock, cuda_graphs=args.graphs)
        table.append((f"decoding step, {rows} rows{', CUDA graphs' * graphed}", f"{ms:.2f} ms"))
        print(f"decoding step, {rows} rows x {T} tokens: {ms:.2f} ms ({rows * 1000 / ms:.0f} tokens/s)", flush=True)
    if graphed:  # the same lean step launched eagerly, and what one eager step launches
        eager = decode_ms(model, precision, prompts[:1], sizes[0], T, clock, cuda_graphs=False)
        kernels = kernels_per_step(model, precision, prompts[:1], sizes[0])
        print(f"  {sizes[0]} rows, lean step without graphs: {eager:.2f} ms; {kernels} per eager step", flush=True)
        table.append((f"decoding step, {sizes[0]} rows, lean step launched eagerly", f"{eager:.2f} ms ({kernels})"))
    forward = decode_ms(model, precision, prompts[:1], sizes[0], T, clock, lean=False)
    ids = torch.tensor([prompts[0]] * sizes[0], device=device)
    with torch.no_grad(), precision.autocast():
        t0 = clock()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=T, min_new_tokens=T,
                       do_sample=True, pad_token_id=tok.pad_token_id)
        hf = 1000 * (clock() - t0) / T
    print(f"  {sizes[0]} rows through the model's own forward: {forward:.2f} ms per step; HF generate {hf:.2f} ms",
          flush=True)
    table.append((f"decoding step, {sizes[0]} rows, through the model's forward / HF generate",
                  f"{forward:.2f} / {hf:.2f} ms"))
    if args.qwen_shaped:
        optional("Qwen2.5-0.5B-shaped model", table, qwen_shaped, args, device, clock, table)
    if not args.no_trl:
        optional("TRL GRPOTrainer", table, trl_rows, args, path, precision, phases, B, G, T, table)
    print(f"\n| figure ({where}, {mode}) | value |\n|---|---|")
    for figure, value in table:
        print(f"| {figure} | {value} |")


def optional(name: str, table: list, part, *args) -> None:
    """Run a part of the benchmark whose failure (out of memory, a package the machine lacks) should
    not lose the figures already measured: its traceback is printed and the table says it failed."""
    try:
        part(*args)
    except Exception as error:
        traceback.print_exc()
        table.append((name, f"FAILED: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]}"))


def trl_rows(args, path, precision, phases, B, G, T, table) -> None:
    """TRL's GRPOTrainer on the same step, one run per --trl-checkpointing setting."""
    # one warm-up step more than ours: TRL's first step also builds its dataloader and optimizer
    trl_dtype = {"auto": "bf16-mixed" if precision.mixed else "float32"}.get(args.dtype, args.dtype)
    for gc in args.trl_checkpointing.split(","):
        out = json.loads(run_child("trl_grpo.py", "--model", path, "--prompt", json.dumps(prompt_messages(PROBLEM)),
                                   "--prompts", str(B), "--group-size", str(G), "--new-tokens", str(T),
                                   "--steps", str(args.steps + 1), "--gradient-checkpointing", gc,
                                   "--device", precision.device_type, "--dtype", trl_dtype).strip().splitlines()[-1])
        step, gen = statistics.median(out["seconds"][1:]), statistics.median(out["generate"][1:])
        checkpointing = "on" if out["gradient_checkpointing"] else "off"
        print(f"TRL GRPOTrainer ({trl_dtype}), gradient checkpointing {checkpointing}: step {step:.2f} s "
              f"(generate {gen:.2f} s), median of {len(out['seconds']) - 1}; ours {phases['step']:.2f} s = "
              f"{phases['step'] / step:.2f} of TRL's time", flush=True)
        table.append((f"GRPO step vs TRL 1.16 (checkpointing {checkpointing})",
                      f"ours {phases['step']:.2f} s, TRL {step:.2f} s: {phases['step'] / step:.2f}x TRL's time"))


if __name__ == "__main__":
    main()
