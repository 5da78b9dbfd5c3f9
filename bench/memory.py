"""How much memory a GRPO step of a large model takes through `run.py grpo`, against what `--plan`
predicts (issue 29). Models of Qwen2.5's shapes with random weights are written once to a cache folder
(with the built-in model's tokenizer, whose ids fit Qwen's vocabulary); each case runs `run.py grpo` in
its own process, one step of 1 prompt x 4 completions of 16 tokens, with a reward that varies on
random weights' gibberish (so the step trains: its gradient norm is shown), and reports the process's
peak memory over its whole life, loading and the final checkpoint included (CPU: ru_maxrss; GPU:
max_memory_allocated).

    python bench/memory.py                          # the 1.5B full fine-tuning and 3B LoRA cases
    python bench/memory.py --cases 1.5b-full --device cuda
    python bench/memory.py --cases tiny-full        # seconds: checks the script itself
"""
import argparse
import json
import re
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
               num_key_value_heads=4, tie_word_embeddings=False),
}
CASES = {  # name: (shape, extra flags)
    "tiny-full": ("tiny", ["--dtype", "bfloat16", "--optim", "adamw_torch_8bit"]),
    "1.5b-full": ("1.5b", ["--dtype", "bfloat16", "--optim", "adamw_torch_8bit"]),
    "3b-lora": ("3b", ["--dtype", "bfloat16", "--use-peft"]),
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


def model_folder(shape: str, cache: Path) -> Path:
    """A Qwen2-architecture model of `shape` with random bfloat16 weights (initialised as transformers
    does, std 0.02), written once."""
    folder = cache / f"random-qwen2.5-{shape}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from lm.loading import BUILTIN, load_model
    _, tokenizer = load_model(BUILTIN)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    start = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    n = sum(p.numel() for p in model.parameters())
    print(f"{folder}: {n / 1e9:.2f}B parameters, written in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def grpo_flags(model: Path, device: str, extra: list[str], out: Path) -> list[str]:
    return ["grpo", "--model", str(model), "--device", device, "--prompts-per-step", "1", "--group-size", "4",
            "--max-completion-length", "16", "--max-steps", "1", "--eval-every", "-1", "--learning-rate", "1e-5",
            "--reward-funcs", "tests.toy_rewards:vowel_share", "--output-dir", str(out), "--overwrite", *extra]


def run_case(name: str, device: str, cache: Path) -> dict:
    shape, extra = CASES[name]
    model = model_folder(shape, cache)
    with tempfile.TemporaryDirectory() as tmp:
        flags = grpo_flags(model, device, extra, Path(tmp) / "run")
        plan = subprocess.run([sys.executable, "run.py", *flags, "--plan"], cwd=ROOT, capture_output=True, text=True)
        predicted = re.search(r"^predicted peak: ([\d.]+) GiB", plan.stdout, re.M)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PROBE, *flags], cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name}: run.py grpo failed:\n{done.stderr[-3000:]}")
        peak = json.loads(re.search(r"^PEAK (.*)$", done.stdout, re.M).group(1))
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = peak["cuda_gib"] if device == "cuda" else peak["rss_gib"]
    return {"case": name, "flags": " ".join(extra), "measured_gib": round(measured, 2),
            "predicted_gib": float(predicted.group(1)) if predicted else None,
            "step_peak_gib": metrics[-1]["peak_memory_gib"], "grad_norm": metrics[-1]["grad_norm"],
            "reward": metrics[-1]["reward"], "seconds": round(time.perf_counter() - start), "plan": plan.stdout}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1.5b-full,3b-lora", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "r1-recipe"))
    args = parser.parse_args()
    rows = [run_case(name, args.device, Path(args.cache)) for name in args.cases.split(",")]
    print("| case | flags | peak, whole process (GiB) | --plan predicted (GiB) | predicted / measured | grad norm | wall-clock |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['predicted_gib'] / r['measured_gib']:.2f}" if r["predicted_gib"] else "no plan"
        print(f"| {r['case']} | `{r['flags']}` | {r['measured_gib']:.2f} | {r['predicted_gib']} | {ratio} | "
              f"{r['grad_norm']:.3g} | {r['seconds']} s |")
    for r in rows:
        print(f"\n{r['case']}, --plan:\n{r['plan']}")


if __name__ == "__main__":
    main()
