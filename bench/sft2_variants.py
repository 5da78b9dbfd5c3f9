"""SFT 2 variants on a finished pipeline run: train SFT 2's config from another start, on other data or
at another rate, then evaluate it as the report does (the same held-out problems, samples and seed) and
pair it with the run's own records of SFT 1, GRPO and SFT 2 (its 8-eval/results.json).

    python bench/sft2_variants.py --run runs/pipeline22 --name grpo-cold294 \\
        --start runs/pipeline22/4-grpo2/checkpoint-8 --data runs/sft2x/cold294.jsonl --learning-rate 2e-5

Each evaluated checkpoint appends one line to <out>/results.jsonl: accuracy, format rate, and per
baseline the paired difference, its 95% interval and problems gained / lost (README of
docs/pipeline-example: the runs behind its SFT 2 section).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import paired  # noqa: E402
from recipe.pipeline import sizes  # noqa: E402
from recipe.report import evaluate_all  # noqa: E402
from sft.train import SFTConfig  # noqa: E402
from sft.train import main as sft_main  # noqa: E402
from tasks import load_math  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished pipeline run (its 8-eval/results.json)")
    parser.add_argument("--name", required=True, help="the variant's folder under --out")
    parser.add_argument("--start", required=True, help="the checkpoint SFT 2 starts from")
    parser.add_argument("--data", required=True, help="SFT rows (jsonl)")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--steps", type=int, default=None, help="default: the pipeline's SFT 2 steps")
    parser.add_argument("--eval-at", default=None, help="steps whose checkpoints are evaluated, comma-separated "
                                                        "(default: the last)")
    parser.add_argument("--out", default="runs/sft2x")
    args = parser.parse_args()
    run, out, n = Path(args.run), Path(args.out) / args.name, sizes(quick=False)
    args.steps = args.steps or n["sft2_steps"]
    evals = [int(s) for s in (args.eval_at or str(args.steps)).split(",")]
    records = json.loads((run / "8-eval" / "results.json").read_text())["models"]
    start = time.perf_counter()
    # the pipeline's SFT 2 config (recipe/pipeline.py) but for the start, the data and the rate
    sft_main(SFTConfig(model=args.start, dataset=args.data, train_examples=100_000, max_steps=args.steps,
                       save_every=min(evals), keep_checkpoints=len(evals) + 1, output_dir=str(out),
                       max_length=n["max_length"], gradient_accumulation_steps=n["accumulation"],
                       learning_rate=args.learning_rate, warmup_ratio=0.1, eval_every=-1, seed=0, overwrite=True))
    print(f"{args.name}: trained in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    rows = load_math("arithmetic:3", "test", len(records["3-sft1"]["T=1"]["per_problem"]), seed=0)
    runs = [{"name": "T=1", "samples": records["3-sft1"]["T=1"]["samples_per_problem"], "temperature": 1.0}]
    models = [(f"{args.name}-{step}", str(out / f"checkpoint-{step}")) for step in evals]
    results, _ = evaluate_all(models, rows, runs, n["tokens"], seed=0)  # as the report evaluates
    for step, (name, _) in zip(evals, models):
        got = results[name]["T=1"]
        line = {"variant": args.name, "step": step, "acc": got["accuracy"], "fmt": got["format_rate"]}
        for baseline in ("3-sft1", "4-grpo2", "6-sft2"):
            c = paired(records[baseline]["T=1"]["per_problem"], got["per_problem"])
            line[f"vs {baseline}"] = (f"{c['diff']:+.3f} ({c['diff_ci95'][0]:+.3f}..{c['diff_ci95'][1]:+.3f}) "
                                      f"{c['gained']}/{c['lost']}")
        print(json.dumps(line), flush=True)
        with open(Path(args.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

if __name__ == "__main__":
    main()
