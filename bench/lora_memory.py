"""Trainable parameters and peak memory of GRPO steps on the built-in model, full fine-tuning against
LoRA (--use-peft): each run in its own process, its peak resident memory (CPU) or peak CUDA memory.

    python bench/lora_memory.py                 # CPU: 2 steps of 4 prompts x 8, 64 new tokens
    python bench/lora_memory.py --device cuda
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import runpy, sys, json, resource, torch
sys.argv = ["run.py"] + sys.argv[1:]
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit:
    pass
peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
print("PEAK", json.dumps({"rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cuda_gib": peak}))
"""


def run(extra: list[str], args, out: Path) -> dict:
    cmd = [sys.executable, "-c", PROBE, "grpo", "--model", args.model, "--device", args.device,
           "--prompts-per-step", "4", "--group-size", "8", "--max-completion-length", str(args.tokens),
           "--max-steps", str(args.steps), "--eval-every", "-1", "--save-every", "1000", "--learning-rate", "1e-5",
           "--reward-funcs", "tests.toy_rewards:vowel_share", "--output-dir", str(out), "--overwrite", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    peak = json.loads(re.search(r"^PEAK (.*)$", done.stdout, re.M).group(1))
    lora = re.search(r"LoRA: ([\d.]+)M of ([\d.]+)M", done.stdout)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**peak, "trainable_m": float(lora.group(1)) if lora else None, "total_m": float(lora.group(2)) if lora else None,
            "step_s": metrics[-1]["time_step"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        full = run([], args, Path(tmp) / "full")
        lora = run(["--use-peft"], args, Path(tmp) / "lora")
    print(f"GRPO, {args.model}, {args.device}, 4 prompts x 8, {args.tokens} new tokens, {args.steps} steps")
    for name, r in (("full fine-tuning", full), ("LoRA r 16, all-linear", lora)):
        trainable = f"{r['trainable_m']:.2f}M of {r['total_m']:.1f}M" if r["trainable_m"] else "all"
        cuda = f", peak CUDA {r['cuda_gib']:.2f} GiB" if r["cuda_gib"] is not None else ""
        print(f"{name:<24} trainable {trainable:<16} peak RSS {r['rss_gib']:.2f} GiB{cuda}, last step {r['step_s']:.1f} s")


if __name__ == "__main__":
    main()
