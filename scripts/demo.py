"""The main job on the built-in defaults (`make demo`): a short cold-start SFT of the built-in model
on the arithmetic task's worked solutions, then `python run.py grpo --group-size 8` from its
checkpoint on harder problems, printing held-out accuracy and format rate before and after.

Each stage is the plain command line, so what it runs is what a user types. On the 2-core CPU this
takes about 40 minutes (SFT ~12, GRPO 12 plus two evals); `--quick` runs every stage for a couple of steps.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    print("+ python run.py " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    parser.add_argument("--output-dir", default="runs/demo")
    args = parser.parse_args()
    out = Path(args.output_dir)
    sft_steps, grpo_minutes, problems = ("2", "1", "8") if args.quick else ("20", "12", "100")

    run("sft", "--max-length", "512", "--gradient-accumulation-steps", "4", "--learning-rate", "1e-4",
        "--warmup-ratio", "0.1", "--max-steps", sft_steps, "--train-examples", "1000", "--eval-every", "-1",
        "--save-every", sft_steps, "--output-dir", str(out / "sft"))
    run("grpo", "--group-size", "8", "--model", str(out / "sft" / f"checkpoint-{sft_steps}"),
        "--dataset", "arithmetic:3-4", "--eval-dataset", "arithmetic:4", "--prompts-per-step", "4",
        "--max-completion-length", "128", "--temperature", "0.8", "--learning-rate", "1e-5",
        "--reward-funcs", "accuracy,format", "--reward-weights", "1,0.5", "--max-steps", "500",
        "--max-minutes", grpo_minutes, "--save-every", "500", "--eval-problems", problems,
        "--output-dir", str(out / "grpo"))
    records = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    before, after = records[0], records[-1]
    print(f"\nheld-out arithmetic:4 ({problems} problems, 4 operands; the SFT data has 2-3), GRPO from the cold-start SFT model:")
    print(f"  accuracy     {before['eval/accuracy']:.3f} -> {after['eval/accuracy']:.3f}")
    print(f"  format rate  {before['eval/format_rate']:.3f} -> {after['eval/format_rate']:.3f}")
    print(f"curves: {out / 'grpo' / 'training_curves.png'}")


if __name__ == "__main__":
    main()
