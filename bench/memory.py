"""How much memory a GRPO step of a large model takes through `run.py grpo`, against what `--plan`
predicts (issues 29 and 30). Models of Qwen2.5's shapes with random weights are made on the device that
runs them (initialised there, as transformers does, std 0.02: seconds for 14B on a GPU) and written to a
folder with the built-in model's tokenizer, whose ids fit Qwen's vocabulary; each case runs `run.py
grpo` in its own process, one step of --prompts x --group-size completions of --tokens new tokens, with
a reward that varies on random weights' gibberish (so the step trains: its gradient norm is shown), and
reports the process's peak memory over its whole life, loading and the final checkpoint included (CPU:
ru_maxrss; GPU: max_memory_allocated), the plan's prediction and the step's phases.

A case is SHAPE-MODE: SHAPE one of SHAPES below, MODE `full` (bfloat16 weights, 8-bit AdamW: 6 bytes a
parameter) or `lora` (a bfloat16 frozen base, adapters); `--flags` adds run.py flags to every case;
`--plan-only` cases write only the config and run `--plan` (a 32B model's weights would not fit a 64 GiB disk).

    python bench/memory.py                          # the 1.5B full fine-tuning and 3B LoRA cases, here
    python bench/memory.py --device cuda --cases 7b-full,14b-lora --prompts 8 --group-size 8 --tokens 1024 \
        --flags "--gradient-checkpointing" --plan-only 32b-lora --drop-models
    python bench/memory.py --cases tiny-full,tiny-lora   # seconds: checks the script itself
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Qwen2.5's published configurations (hidden, intermediate, layers, attention heads, key/value heads)
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False, vocab_size=152064),
    "14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                num_key_value_heads=8, tie_word_embeddings=False, vocab_size=152064),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, tie_word_embeddings=False, vocab_size=152064),
}
MODES = {  # how each case trains
    "full": ["--dtype", "bfloat16", "--optim", "adamw_torch_8bit"],
    "lora": ["--dtype", "bfloat16", "--use-peft"],
}
PROBE = """
import runpy, sys, json, resource, torch
sys.argv = ["run.py"] + sys.argv[1:]
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
print("PEAK", json.dumps({"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cuda_gib": peak}))
"""


def qwen_config(shape: str, **extra):
    """Qwen2.5's config fields with the dimensions of `shape` (bench/decode_scale.py builds from it too)."""
    from transformers import Qwen2Config
    return Qwen2Config(**{"vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1e6,
                          "rms_norm_eps": 1e-6, "tie_word_embeddings": True, **SHAPES[shape], **extra})


def model_folder(shape: str, cache: Path, device: str = "cpu", weights: bool = True) -> Path:
    """A Qwen2-architecture model of `shape` with random bfloat16 weights, initialised on `device` as
    transformers does (std 0.02), written once with the built-in tokenizer (only its config and
    tokenizer when not `weights`: enough for `--plan`)."""
    folder = cache / f"random-qwen2.5-{shape}{'' if weights else '-config'}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lm.loading import builtin_model_dir
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())  # its config and tokenizer are all it needs
    config = qwen_config(shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    tmp = folder.with_name(folder.name + ".tmp")
    start = time.perf_counter()
    if weights:
        torch.manual_seed(0)
        with torch.device(device):  # made and initialised where it runs: nothing large crosses a bus
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(tmp)
        n = sum(p.numel() for p in model.parameters())
        del model
    else:
        config.save_pretrained(tmp)
        n = None
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    size = f"{n / 1e9:.2f}B parameters" if n else "config only"
    print(f"{folder}: {size}, made on {device} and written in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


PHASES = ("time_sampling", "time_logprobs", "time_backward", "time_optimizer")


def grpo_flags(model: Path, device: str, args, extra: list[str], out: Path) -> list[str]:
    return ["grpo", "--model", str(model), "--device", device, "--prompts-per-step", str(args.prompts),
            "--group-size", str(args.group_size), "--max-completion-length", str(args.tokens), "--max-steps", "1",
            "--eval-every", "-1", "--learning-rate", "1e-5", "--reward-funcs", "tests.toy_rewards:vowel_share",
            "--output-dir", str(out), "--overwrite", *extra, *args.flags.split()]


def predicted_gib(flags: list[str]) -> tuple[float | None, str]:
    plan = subprocess.run([sys.executable, "run.py", *flags, "--plan"], cwd=ROOT, capture_output=True, text=True)
    found = re.search(r"^predicted peak: ([\d.]+) GiB", plan.stdout, re.M)
    return (float(found.group(1)) if found else None), plan.stdout + plan.stderr[-2000:] * (plan.returncode != 0)


def run_case(name: str, args, plan_only: bool = False) -> dict:
    shape, mode = name.rsplit("-", 1)
    if shape not in SHAPES or mode not in MODES:
        sys.exit(f"error: --cases {name}: expected SHAPE-MODE with SHAPE in {', '.join(SHAPES)} and MODE in {', '.join(MODES)}")
    extra = MODES[mode]
    model = model_folder(shape, Path(args.cache), args.device, weights=not plan_only)
    row = {"case": name, "flags": " ".join(extra + args.flags.split()), "measured_gib": None, "step_peak_gib": None,
           "grad_norm": None, "reward": None, "phases": {}, "seconds": 0}
    with tempfile.TemporaryDirectory() as tmp:
        flags = grpo_flags(model, args.device, args, extra, Path(tmp) / "run")
        row["predicted_gib"], row["plan"] = predicted_gib(flags)
        if plan_only:
            return row
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *flags], cwd=ROOT, capture_output=True, text=True)
        row["seconds"] = round(time.perf_counter() - start)
        if args.drop_models:  # a 14B model is 28 GB of a 64 GiB disk
            shutil.rmtree(model, ignore_errors=True)
        if done.returncode:
            print(f"{name}: run.py grpo failed:\n{done.stderr[-3000:]}", flush=True)
            row["failed"] = (done.stderr.strip().splitlines() or ["?"])[-1][:200]
            return row
        peak = json.loads(re.search(r"^PEAK (.*)$", done.stdout, re.M).group(1))
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    row.update(measured_gib=round(peak["cuda_gib"] if args.device == "cuda" else peak["rss_gib"], 2),
               step_peak_gib=last["peak_memory_gib"], grad_norm=last["grad_norm"], reward=last["reward"],
               phases={k[5:]: last[k] for k in PHASES if k in last})
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1.5b-full,3b-lora", help="comma-separated SHAPE-MODE cases")
    parser.add_argument("--plan-only", default="", help="comma-separated cases to plan without running")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens a completion (random weights: all of them)")
    parser.add_argument("--flags", default="", help="more run.py grpo flags for every case")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "r1-recipe"))
    parser.add_argument("--drop-models", action="store_true", help="delete each model folder after its case")
    args = parser.parse_args()
    cases = [(name, False) for name in args.cases.split(",") if name] + \
            [(name, True) for name in args.plan_only.split(",") if name]
    rows = []
    for name, plan_only in cases:
        rows.append(run_case(name, args, plan_only))
        print(f"{name}: {json.dumps({k: v for k, v in rows[-1].items() if k != 'plan'})}", flush=True)
    where = torch_device_name(args.device)
    print(f"\n{args.prompts} prompt(s) x {args.group_size} x {args.tokens} new tokens, beta 0, on {where}:\n")
    print("| case | flags | peak, whole process (GiB) | --plan predicted (GiB) | predicted / measured | "
          "sampling / log-probs / backward / optimizer (s) | grad norm | wall-clock |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        measured = f"{r['measured_gib']:.2f}" if r["measured_gib"] is not None else r.get("failed", "plan only")
        ratio = f"{r['predicted_gib'] / r['measured_gib']:.2f}" if r["predicted_gib"] and r["measured_gib"] else "-"
        phases = " / ".join(f"{r['phases'][k[5:]]:.1f}" for k in PHASES if k[5:] in r["phases"]) or "-"
        norm = f"{r['grad_norm']:.3g}" if r["grad_norm"] is not None else "-"
        print(f"| {r['case']} | `{r['flags']}` | {measured} | {r['predicted_gib']} | {ratio} | {phases} | {norm} | "
              f"{r['seconds']} s |")
    for r in rows:
        print(f"\n{r['case']}, --plan:\n{r['plan']}")
    failed = [r["case"] for r in rows if "failed" in r or (r["grad_norm"] is not None and not r["grad_norm"] > 0)]
    if failed:
        sys.exit(f"error: {', '.join(failed)} did not train (failed, or a zero gradient)")


def torch_device_name(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"this CPU ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
