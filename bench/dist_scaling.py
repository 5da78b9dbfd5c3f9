"""A GRPO step on 1, 2 and 4 processes (torchrun, gloo on a CPU), with and without --fsdp: the same
run each time (the same global batch), so the metrics must agree and the time says what the
plumbing costs. On a CPU with few cores this measures correctness and overhead, not speed-up: the
processes share the cores.

    python bench/dist_scaling.py                       # tiny model, 1/2/4 processes, 4 steps each
    python bench/dist_scaling.py --procs 1,2 --model smollm2-135m --steps 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, fsdp: bool, args, out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "run.py", "grpo", "--model", args.model, "--device", "cpu", "--dtype", "float32",
           "--prompts-per-step", "4", "--group-size", "8", "--max-completion-length", str(args.tokens),
           "--micro-batch-size", "8", "--max-steps", str(args.steps), "--save-every", "1000", "--eval-every", "-1",
           "--learning-rate", "1e-4", "--reward-funcs", "tests.toy_rewards:vowel_share,format",
           "--output-dir", str(out), "--overwrite", *(["--fsdp"] if fsdp else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="max completion length")
    args = parser.parse_args()
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for fsdp in (False, True):
            for procs in [int(p) for p in args.procs.split(",")]:
                if fsdp and procs == 1:
                    continue  # --fsdp shards over several processes
                metrics = run(procs, fsdp, args, Path(tmp) / f"{procs}{fsdp}")
                reference = reference or metrics
                later = metrics[1:] or metrics  # the first step also builds the sampler
                differ = [max(abs(a[k] - b[k]) for k in ("loss", "reward", "grad_norm"))
                          for a, b in zip(reference, metrics)]
                rows.append((f"{procs} process{'es' if procs > 1 else ''}{' --fsdp' if fsdp else ''}",
                             sum(r["time_step"] for r in later) / len(later),
                             sum(r["time_sampling"] for r in later) / len(later),
                             sum(r["time_training"] for r in later) / len(later), differ))
                print(rows[-1][0], "per step:", json.dumps([{k: r[k] for k in ("loss", "reward", "grad_norm",
                      "completion_len")} for r in metrics]), flush=True)
    print(f"GRPO step, {args.model}, 4 prompts x 8 completions, {args.tokens} new tokens, {args.steps} steps "
          f"(times: mean of steps 2..; differences: the largest of loss, reward, grad norm)")
    print(f"{'run':<24}{'step s':>9}{'sampling s':>12}{'training s':>12}  difference from 1 process, step by step")
    for name, step, sampling, training, differ in rows:
        print(f"{name:<24}{step:9.3f}{sampling:12.3f}{training:12.3f}  {' '.join(f'{d:.1e}' for d in differ)}")


if __name__ == "__main__":
    main()
