"""The main job on the built-in defaults (`make demo`): a short cold-start SFT of the built-in model
on the arithmetic task's worked solutions, then `python run.py grpo --group-size 8` from its
checkpoint, then both models on two held-out sets: level 3 (the problems GRPO trains on, unseen ones)
and problems with more operands than the SFT data (level 3's rules with 4 operands, `arithmetic:3x4`),
printing accuracy before and after with a paired comparison on the same problems.

Each stage is the plain command line, so what it runs is what a user types. The SFT stage is the
80-step cold start (3,000 worked solutions): after 30 steps the model is right on level 3 about one
time in ten at T=1, too seldom for 12 minutes of GRPO to move it (session 4: 0.145 -> 0.090 held-out,
within the noise). GRPO trains on level-3 problems (3 operands), where the 80-step model is right
about a quarter of the time, so most groups of 8 hold both right and wrong answers; at 4 operands it
is right a few times in a hundred and groups seldom differ. Held-out accuracy is pass@1 over 4
samples per problem at GRPO's own temperature, 1.0, where its effect shows most (the README has
T=0.6 and greedy too). On the 2-core CPU this takes about 40 minutes (SFT ~16, GRPO 12, the
evaluations ~10); `--quick` runs every stage for a couple of steps on a few problems.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    if args[0] in ("sft", "grpo"):  # each demo starts its stage folders afresh
        args = (*args, "--overwrite")
    print("+ python run.py " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    parser.add_argument("--output-dir", default="runs/demo")
    args = parser.parse_args()
    out = Path(args.output_dir)
    sft_steps, grpo_minutes, problems = ("2", "1", "8") if args.quick else ("80", "12", "100")
    sft, grpo = out / "sft" / f"checkpoint-{sft_steps}", out / "grpo"

    run("sft", "--max-length", "512", "--gradient-accumulation-steps", "4", "--learning-rate", "1e-4",
        "--warmup-ratio", "0.1", "--max-steps", sft_steps, "--train-examples", "3000", "--eval-every", "-1",
        "--save-every", sft_steps, "--output-dir", str(out / "sft"))
    run("grpo", "--group-size", "8", "--model", str(sft), "--dataset", "arithmetic:3", "--prompts-per-step", "8",
        "--max-completion-length", "128", "--temperature", "1.0", "--learning-rate", "2e-5",
        "--reward-funcs", "accuracy,format", "--reward-weights", "1,0.5", "--max-steps", "500",
        "--max-minutes", grpo_minutes, "--save-every", "500", "--eval-every", "-1", "--output-dir", str(grpo))
    # this run's last step, not the highest-numbered folder: an earlier, longer run may have left one
    steps = [json.loads(line) for line in (grpo / "metrics.jsonl").read_text().splitlines()]
    final = grpo / f"checkpoint-{steps[-1]['step']}"
    held_out = {"arithmetic:3": "level 3, the level GRPO trains on",
                "arithmetic:3x4": "4 operands; the SFT data has 2-3"}
    eval_dir = lambda dataset: out / f"eval-{dataset.split(':')[1]}"
    for dataset in held_out:
        run("eval", "--model", f"{sft},{final}", "--dataset", dataset, "--num-problems", problems,
            "--samples-per-problem", "4", "--temperature", "1.0", "--max-new-tokens", "128",
            "--batch-size", "50", "--output-dir", str(eval_dir(dataset)))

    quarter = max(1, len(steps) // 4)
    first, last = (sum(s["reward/accuracy"] for s in part) / len(part) for part in (steps[:quarter], steps[-quarter:]))
    print(f"\nGRPO: {len(steps)} steps; accuracy of its own samples (level 3, T=1) {first:.3f} in the first "
          f"quarter of the steps -> {last:.3f} in the last")
    for dataset, what in held_out.items():
        report = json.loads((eval_dir(dataset) / "report.json").read_text())["models"]
        before, after = report[str(sft)], report[str(final)]
        print(f"held-out {dataset} ({what}), {problems} problems x 4 samples at T=1, SFT -> GRPO:")
        print(f"  pass@1       {before['accuracy']:.3f} -> {after['accuracy']:.3f}   (paired difference "
              f"{after['paired']['diff']:+.3f}, 95% CI {after['paired']['diff_ci95'][0]:+.3f} to "
              f"{after['paired']['diff_ci95'][1]:+.3f}, sign test p = {after['paired']['p_sign_test']:.3g})")
        print(f"  format rate  {before['format_rate']:.3f} -> {after['format_rate']:.3f}")
    print(f"curves: {grpo / 'training_curves.png'}")


if __name__ == "__main__":
    main()
