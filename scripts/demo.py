"""The main job on the built-in defaults (`make demo`): a short cold-start SFT of the built-in model
on the arithmetic task's worked solutions, then `python run.py grpo --group-size 8` (LoRA adapters) from
its checkpoint, then both models on two held-out sets: level 3 (the problems GRPO trains on, unseen ones)
and problems with more operands than the SFT data (level 3's rules with 4 operands, `arithmetic:3x4`),
printing accuracy before and after with a paired comparison on the same problems.

Each stage is the plain command line, so what it runs is what a user types. The SFT stage is the
80-step cold start (3,000 worked solutions): after 30 steps the model is right on level 3 about one
time in ten at T=1, too seldom for GRPO to move it (session 4: 0.145 -> 0.090 held-out, within the
noise). GRPO trains on level-3 problems (3 operands), where the 80-step model is right about a
quarter of the time, so most groups of 8 hold both right and wrong answers; at 4 operands it is right
a few times in a hundred and groups seldom differ. Held-out accuracy is pass@1 over 4 samples per
problem at GRPO's own temperature, 1.0, where its effect shows most (docs/results.md has T=0.6 and greedy
too).

`--seed` is the GRPO stage's seed (its training problems, their order, its sampling); the cold start
and the held-out problems are the same for every seed, so seeds compare on the same problems, and a
second seed reuses the first one's cold start. GRPO runs a fixed number of steps, not minutes, so a
seed gives the same run on any machine. How the result varies with the seed: docs/demo-seeds.md.
On the 2-core CPU a seed takes about 40 minutes (SFT ~12, GRPO ~12, the evaluations ~15), a further
seed about 27; `--quick` runs every stage for a couple of steps on a few problems.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS, GRPO_STEPS = 80, 19  # 19: the steps the demo's former 12-minute GRPO budget bought on the CPU
# GRPO trains LoRA adapters (rank 16 on every linear layer, no dropout) at 10x full fine-tuning's rate: full
# fine-tuning at 2e-5 gained on held-out problems for no seed beyond the noise and lost for one (AdamW moves
# all 134.5M weights by about the rate each step, mostly noise at 64 completions a step); LoRA gained for
# each seed tried (docs/demo-seeds.md). 10x: LoRA's best rate in "LoRA Without Regret" (Schulman et al. 2025)
GRPO_LR = "2e-4"
GRPO_LORA = ["--use-peft", "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0"]
HELD_OUT = {"arithmetic:3": ("level 3, the level GRPO trains on", 200),
            "arithmetic:3x4": ("4 operands; the SFT data has 2-3", 50)}  # (what, problems)


def run(*args: str) -> None:
    if args[0] in ("sft", "grpo"):  # each demo starts its stage folders afresh
        args = (*args, "--overwrite")
    print("+ python run.py " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, check=True)


def sft_command(out: Path, steps: int) -> list[str]:
    return ["sft", "--max-length", "512", "--gradient-accumulation-steps", "4", "--learning-rate", "1e-4",
            "--warmup-ratio", "0.1", "--max-steps", str(steps), "--train-examples", "3000", "--eval-every", "-1",
            "--save-every", str(steps), "--output-dir", str(out / "sft")]


def grpo_command(sft: Path, grpo: Path, steps: int, seed: int) -> list[str]:
    return ["grpo", "--group-size", "8", "--model", str(sft), "--dataset", "arithmetic:3", "--prompts-per-step", "8",
            "--max-completion-length", "128", "--temperature", "1.0", "--learning-rate", GRPO_LR, *GRPO_LORA,
            "--reward-funcs", "accuracy,format", "--reward-weights", "1,0.5", "--max-steps", str(steps),
            "--save-every", str(steps), "--eval-every", "-1", "--seed", str(seed), "--output-dir", str(grpo)]


def cold_start(out: Path, steps: int, fresh: bool, runner=run) -> Path:
    """The SFT checkpoint GRPO starts from: trained now, or reused when an earlier demo trained it in
    `out` with the same command (its command is written beside it once it has finished)."""
    command, checkpoint = sft_command(out, steps), out / "sft" / f"checkpoint-{steps}"
    done = out / "sft" / "demo-command.json"
    if not fresh and checkpoint.is_dir() and done.exists() and json.loads(done.read_text()) == command:
        print(f"reusing the cold start {checkpoint} (trained by an earlier demo with the same command; "
              f"--fresh-sft trains it again)", flush=True)
        return checkpoint
    done.unlink(missing_ok=True)
    runner(*command)
    done.write_text(json.dumps(command))
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the GRPO stage's seed: its training problems, their order and its sampling")
    parser.add_argument("--fresh-sft", action="store_true",
                        help="train the cold start again even when an identical one is in --output-dir")
    parser.add_argument("--output-dir", help="default runs/demo (runs/demo-quick with --quick, so that a smoke "
                                              "run never replaces a real demo's cold start)")
    args = parser.parse_args()
    out = Path(args.output_dir or ("runs/demo-quick" if args.quick else "runs/demo"))
    sft_steps, grpo_steps = (2, 2) if args.quick else (SFT_STEPS, GRPO_STEPS)
    suffix = f"-seed{args.seed}" if args.seed else ""  # seed 0 keeps the folder names it always had
    grpo = out / f"grpo{suffix}"

    sft = cold_start(out, sft_steps, args.fresh_sft)
    run(*grpo_command(sft, grpo, grpo_steps, args.seed))
    final = grpo / f"checkpoint-{grpo_steps}"
    eval_dir = lambda dataset: out / f"eval-{dataset.split(':')[1]}{suffix}"
    for dataset, (_, problems) in HELD_OUT.items():
        run("eval", "--model", f"{sft},{final}", "--dataset", dataset, "--num-problems", str(8 if args.quick else problems),
            "--samples-per-problem", "4", "--temperature", "1.0", "--max-new-tokens", "128",
            "--batch-size", "50", "--output-dir", str(eval_dir(dataset)))

    steps = [json.loads(line) for line in (grpo / "metrics.jsonl").read_text().splitlines()]
    quarter = max(1, len(steps) // 4)
    first, last = (sum(s["reward/accuracy"] for s in part) / len(part) for part in (steps[:quarter], steps[-quarter:]))
    print(f"\nGRPO (seed {args.seed}): {len(steps)} steps; accuracy of its own samples (level 3, T=1) {first:.3f} in "
          f"the first quarter of the steps -> {last:.3f} in the last")
    for dataset, (what, _) in HELD_OUT.items():
        report = json.loads((eval_dir(dataset) / "report.json").read_text())
        before, after = report["models"][str(sft)], report["models"][str(final)]
        print(f"held-out {dataset} ({what}), {report['num_problems']} problems x 4 samples at T=1, SFT -> GRPO:")
        print(f"  pass@1       {before['accuracy']:.3f} -> {after['accuracy']:.3f}   (paired difference "
              f"{after['paired']['diff']:+.3f}, 95% CI {after['paired']['diff_ci95'][0]:+.3f} to "
              f"{after['paired']['diff_ci95'][1]:+.3f}, sign test p = {after['paired']['p_sign_test']:.3g})")
        print(f"  format rate  {before['format_rate']:.3f} -> {after['format_rate']:.3f}")
    print(f"curves: {grpo / 'training_curves.png'}")


if __name__ == "__main__":
    main()
