"""Every configuration of tests/test_distributed.py in one process launch: under torchrun (N processes)
or plain python (1 process). Usage: python tests/dist_cases.py OUT equal[,faults]"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import grpo.train as grpo_train  # noqa: E402
from common import dist  # noqa: E402
from common.config import ConfigError  # noqa: E402
from distill.train import DistillConfig  # noqa: E402
from distill.train import main as distill  # noqa: E402
from grpo.config import GRPOConfig  # noqa: E402
from recipe.evaluate import EvalConfig  # noqa: E402
from recipe.evaluate import main as evaluate  # noqa: E402
from recipe.sample import SampleConfig  # noqa: E402
from recipe.sample import main as sample  # noqa: E402
from sft.train import SFTConfig  # noqa: E402
from sft.train import main as sft  # noqa: E402

GRPO = dict(model="tiny", group_size=4, prompts_per_step=2, max_completion_length=8, max_steps=2, micro_batch_size=3,
            learning_rate=1e-3, eval_every=-1, save_every=2, overwrite=True,
            reward_funcs="tests.toy_rewards:vowel_share,format", reward_weights="1,1")
PACKED = dict(train_examples=16, max_length=700, max_steps=2, gradient_accumulation_steps=2, learning_rate=1e-3,
              eval_every=-1, save_every=2, overwrite=True)
EQUAL_SKIP = dict(dataset="arithmetic:1", prompts_per_step=4, reward_weights="",
                  reward_funcs="tests.toy_rewards:vowel_share_if_minus")  # some groups get one reward
EQUAL = {  # name: (loop, config): each must end with the same weights on 1 and on N processes
    "grpo": ("grpo", {}),
    "dr_grpo": ("grpo", dict(loss_type="dr_grpo")),
    "dapo": ("grpo", dict(loss_type="dapo", beta=0.04)),
    "iterations": ("grpo", dict(num_iterations=2, lr_scheduler="cosine", warmup_ratio=0.5)),
    "skip_zero": ("grpo", EQUAL_SKIP),
    "batch_scale": ("grpo", dict(scale_rewards="batch")),
    "dynamic": ("grpo", dict(EQUAL_SKIP, prompts_per_step=2, dynamic_sampling=True)),   # ranks keep unequal shares
    "curriculum": ("grpo", dict(EQUAL_SKIP, curriculum="pass-rate", reward_weights="0,1",
                                reward_funcs="accuracy,tests.toy_rewards:vowel_share_if_minus")),
    "top_k_tis": ("grpo", dict(top_k=20, top_p=0.9, beta=0.04, sampler_correction="tis")),
    "sft": ("sft", dict(model="tiny")),
    "distill": ("distill", dict(teacher="tiny", student_from_teacher_layers="1")),
    "distill_on_policy": ("distill", dict(teacher="tiny", student_from_teacher_layers="1", on_policy=True,
                                          off_policy_fraction=0.5, on_policy_prompts=2, on_policy_max_new_tokens=8)),
    # --fsdp (sharded weights, gradients, AdamW state; the one-process run is the plain loop)
    "grpo_fsdp": ("grpo", dict(fsdp=True, loss_type="dapo", beta=0.04, num_iterations=2)),
    "skip_zero_fsdp": ("grpo", dict(EQUAL_SKIP, fsdp=True)),
    "sft_fsdp": ("sft", dict(model="tiny", fsdp=True)),
    "distill_fsdp": ("distill", dict(teacher="tiny", student_from_teacher_layers="1", fsdp=True)),
}


def run(loop: str, out: str, **kw) -> None:
    kw["fsdp"] = kw.get("fsdp", False) and dist.world() > 1
    if loop == "grpo":
        grpo_train.main(GRPOConfig(**{**GRPO, **kw}, output_dir=out))
    elif loop == "sft":
        sft(SFTConfig(**{**PACKED, **kw}, output_dir=out))
    else:
        distill(DistillConfig(**{**PACKED, **kw}, output_dir=out))


def faults(out: str) -> None:
    """Cases where ranks differ: none may hang (the test sets a 30 s process-group timeout)."""
    # rank 0's prompts are all a + b, whose groups get a constant reward: it trains nothing (with --fsdp
    # it trains them all, adding 0)
    for name, kw in (("zero_on_one_rank", {}), ("zero_on_one_rank_fsdp", dict(fsdp=True))):
        run("grpo", f"{out}/{name}", dataset="arithmetic:1", prompts_per_step=2, reward_weights="",
            reward_funcs="tests.toy_rewards:constant_on_rank_0", **kw)
    # a non-finite loss on rank 1 only, in the first step: every rank skips that step (FSDP: ranks that
    # run different numbers of passes would hang)
    real, calls = grpo_train.grpo_loss, {"n": 0}

    def nan_on_rank_1(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if dist.rank() == 1 and calls["n"] == 1 else loss), stats

    grpo_train.grpo_loss = nan_on_rank_1
    for name, kw in (("nan_on_one_rank", {}), ("nan_on_one_rank_fsdp", dict(fsdp=True))):
        calls["n"] = 0
        run("grpo", f"{out}/{name}", max_steps=3, save_every=1, **kw)
    grpo_train.grpo_loss = real
    # a time budget already spent: every rank stops after the first step
    run("grpo", f"{out}/out_of_time", max_steps=5, max_minutes=1e-9)
    # a global batch that does not divide by the number of processes: the error run.py prints
    try:
        run("grpo", f"{out}/indivisible", prompts_per_step=3)
    except ConfigError as e:
        Path(f"{out}/indivisible-{dist.rank()}.txt").write_text(str(e))


if __name__ == "__main__":
    out, which = sys.argv[1], sys.argv[2]
    dist.init("cpu")
    torch.set_num_threads(1)
    if "equal" in which.split(","):
        for name, (loop, kw) in EQUAL.items():
            run(loop, f"{out}/{name}", **kw)
        # the commands that only sample: problems shared out over the ranks, rank 0 writes
        evaluate(EvalConfig(model="tiny", num_problems=5, samples_per_problem=2, temperature=1.0, max_new_tokens=8,
                            batch_size=2, output_dir=f"{out}/eval"))
        sample(SampleConfig(model="tiny", num_prompts=5, num_samples=2, max_new_tokens=8, batch_size=2,
                            keep="best", min_score=-9, output_dir=f"{out}/sample"))
    if "faults" in which.split(","):
        faults(out)
