"""The sampler's decoding step at full model size, as a multiple of the memory-bandwidth floor (issue 30).

    python bench/decode_scale.py --device cuda                       # 135M, 1.5B, 7B at 8 and 64 rows; 64 x 4096
    python bench/decode_scale.py --shapes tiny --rows 2,4 --long-rows 4 --long-tokens 64 --window 16   # CPU check

A decoding step reads every weight matrix once (whatever the number of rows) and the keys and values
of the positions it attends to, so no step can be faster than

    floor = (bytes of the weight matrices and the output layer + bytes of the KV cache read) / bandwidth

The bandwidth is the card's published figure (a table below, by name) where the card is known, else the
copy bandwidth measured here (a 1 GiB device-to-device copy, bytes read plus written, over its time),
which is also printed. Models of Qwen2.5's shapes (bench/memory.py's SHAPES, plus the built-in model's)
are made with random weights on the device in bfloat16 (float32 on a CPU, the sampler's own dtype
there); every completion runs the full budget (EOS suppressed).

1. Decoding at scale: ms a step for each shape and row count (a 128-token prompt, --tokens new tokens,
   the prefill included, median of 2 after a warm-up that also captures the CUDA graphs), and its
   multiple of the floor (KV counted at the mean filled length).
2. Long completions: one rollout of --long-rows rows x --long-tokens tokens (after a warm-up rollout of
   the same shape), ms a step in each --window-token window, and its multiple of the floor that counts
   the KV cache filled in that window (its mean length), not the whole cache.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lm.rollout  # noqa: E402
from bench.memory import SHAPES, qwen_config  # noqa: E402
from common.runlog import phase_clock  # noqa: E402
from lm.loading import builtin_model_dir  # noqa: E402
from lm.sampling import refresh_sampler, sample  # noqa: E402

NEVER = -1  # an EOS id no token has
# published memory bandwidth, bytes a second, by a substring of torch.cuda.get_device_name()
CARDS = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
         ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12)]


def published_bandwidth(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "a CPU"
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in CARDS if key in name), None), name


def measured_bandwidth(device: torch.device) -> float:
    """Bytes a second of a device-to-device copy (read + write), the best of 5."""
    n = (1 << 30) if device.type == "cuda" else (1 << 27)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = now(device)
        dst.copy_(src)
        best = min(best, now(device) - t0)
    return 2 * n / best


def now(device: torch.device) -> float:
    return phase_clock(device)()


def make_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM
    # the built-in model's own config (SmolLM2-135M: Llama), or Qwen2.5's of the shape
    config = AutoConfig.from_pretrained(builtin_model_dir()) if shape == "135m" else qwen_config(shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def weight_bytes(model) -> int:
    """What one step reads of the weights: every matrix of the layers and the output layer (the
    embedding is read one row a token, nothing)."""
    body = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if ".layers." in n and p.dim() == 2)
    head = model.get_output_embeddings().weight
    return body + head.numel() * head.element_size()


def kv_bytes_per_position(model) -> int:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(model.parameters()).element_size()


def prompts_of(model, rows: int, length: int = 128) -> list[list[int]]:
    g = torch.Generator().manual_seed(rows)
    return [torch.randint(200, min(model.config.vocab_size, 49000), (length,), generator=g).tolist()]


def rollout_seconds(model, prompt, rows: int, T: int, device) -> float:
    refresh_sampler(model)
    t0 = now(device)
    sample(model, prompt, group_size=rows, max_new_tokens=T, temperature=1.0, eos_token_id=NEVER, pad_token_id=0,
           keys=[rows])
    return now(device) - t0


def decoding_at_scale(model, shape, rows_list, T, device, bandwidth) -> list[dict]:
    out = []
    prompt = prompts_of(model, 0)
    weights, kv = weight_bytes(model), kv_bytes_per_position(model)
    for rows in rows_list:
        rollout_seconds(model, prompt, rows, T, device)  # warm-up: compiles and captures
        seconds = statistics.median(rollout_seconds(model, prompt, rows, T, device) for _ in range(2))
        ms = 1000 * seconds / T
        floor = 1000 * (weights + kv * rows * (len(prompt[0]) + T / 2)) / bandwidth
        out.append({"shape": shape, "rows": rows, "ms": ms, "floor_ms": floor, "x_floor": ms / floor,
                    "tokens_per_s": rows * T / seconds})
        print(json.dumps(out[-1]), flush=True)
    return out


def long_windows(model, shape, rows, T, window, device, bandwidth) -> list[dict]:
    """ms a step in each window of one rollout, marked where the rollout asks for the step's window."""
    prompt = prompts_of(model, 1)
    P = len(prompt[0])
    rollout_seconds(model, prompt, rows, T, device)  # warm-up: every graph of this shape captured
    marks, real = [], lm.rollout.Rollout.window

    def marking(self, filled, buckets):  # called once per decoding step s with filled = P + s
        if (filled - P) % window == 0 or filled - P == 1:
            if device.type == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append((filled - P, event))
            else:
                marks.append((filled - P, time.perf_counter()))
        return real(self, filled, buckets)

    lm.rollout.Rollout.window = marking
    try:
        rollout_seconds(model, prompt, rows, T, device)
    finally:
        lm.rollout.Rollout.window = real
    if device.type == "cuda":
        last = torch.cuda.Event(enable_timing=True)
        last.record()
        torch.cuda.synchronize(device)
        seconds_between = lambda a, b: a.elapsed_time(b) / 1000
    else:
        last, seconds_between = time.perf_counter(), lambda a, b: b - a
    weights, kv = weight_bytes(model), kv_bytes_per_position(model)
    out = []
    bounds = marks + [(T, last)]
    for (s0, m0), (s1, m1) in zip(bounds, bounds[1:]):
        seconds = seconds_between(m0, m1)
        steps = s1 - s0
        ms = 1000 * seconds / steps
        mean_filled = P + (s0 + s1) / 2
        floor = 1000 * (weights + kv * rows * mean_filled) / bandwidth
        out.append({"shape": shape, "rows": rows, "tokens": f"{s0}-{s1}", "ms": ms, "floor_ms": floor,
                    "x_floor": ms / floor, "whole_cache_x_floor": ms / (1000 * (weights + kv * rows * (P + T)) / bandwidth)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default="135m,1.5b,7b", help=f"comma-separated: 135m, {', '.join(SHAPES)}")
    parser.add_argument("--rows", default="8,64")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens a rollout, for part 1")
    parser.add_argument("--long-shape", default="1.5b", help="the model of part 2 (empty: skip it)")
    parser.add_argument("--long-rows", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    published, name = published_bandwidth(device)
    measured = measured_bandwidth(device)
    bandwidth = published or measured
    print(f"{name}: bandwidth {'published ' + format(published / 1e12, '.2f') + ' TB/s, ' if published else ''}"
          f"measured copy {measured / 1e12:.3f} TB/s; floors use the {'published' if published else 'measured'} "
          f"figure; models in {dtype}", flush=True)
    rows = [int(r) for r in args.rows.split(",")]
    scale, long = [], []
    for shape in args.shapes.split(","):
        model = make_model(shape, device, dtype)
        scale += decoding_at_scale(model, shape, rows, args.tokens, device, bandwidth)
        if shape == args.long_shape:
            long = long_windows(model, shape, args.long_rows, args.long_tokens, args.window, device, bandwidth)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.long_shape and args.long_shape not in args.shapes.split(","):
        model = make_model(args.long_shape, device, dtype)
        long = long_windows(model, args.long_shape, args.long_rows, args.long_tokens, args.window, device, bandwidth)
    print(f"\n| model ({name}, {dtype}) | rows | ms a step | floor (ms) | x floor | tokens/s |\n|---|---|---|---|---|---|")
    for r in scale:
        print(f"| {r['shape']} | {r['rows']} | {r['ms']:.2f} | {r['floor_ms']:.2f} | {r['x_floor']:.2f} | "
              f"{r['tokens_per_s']:.0f} |")
    if long:
        print(f"\n| {long[0]['shape']}, {args.long_rows} rows, tokens | ms a step | floor, KV filled (ms) | x floor | "
              f"x the floor of the whole cache |\n|---|---|---|---|---|")
        for r in long:
            print(f"| {r['tokens']} | {r['ms']:.2f} | {r['floor_ms']:.2f} | {r['x_floor']:.2f} | "
                  f"{r['whole_cache_x_floor']:.2f} |")


if __name__ == "__main__":
    main()
