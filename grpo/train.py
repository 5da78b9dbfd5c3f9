"""`python run.py grpo`: the GRPO training loop, top to bottom.

One step (DESIGN.md's data flow):
    B prompts -> G completions each (KV-cache sampler)            -> ids, mask (N, T), truncated (N,)
    decode, score with each reward, weighted sum                  -> rewards (N,)
      (--dynamic-sampling: groups with equal rewards dropped and refilled; --curriculum: which prompts)
    group-normalised advantages                                   -> adv (N,)
    old log-probs (only if num_iterations > 1), ref log-probs (only if beta > 0)
    for each of num_iterations updates: for each micro-batch:
        logp = per-token log-probs at the sampling temperature     (n, T)
        loss = grpo_loss(...) with the whole batch's normaliser, backward
    clip the gradient norm, optimizer step, LR schedule
    metrics line, a few decoded samples, checkpoint every k steps, eval every k steps

Deliberate choices:
- Training log-probs are taken at the sampling temperature and under its top-k / top-p truncation,
  so the trained distribution is the one that sampled. The sampler's own log-probs give the
  mismatch that remains (logged every step) and, with --sampler-correction tis, its correction.
- Sampling randomness is keyed by (seed, step, global prompt index) (lm/draw.py): a resumed run draws
  what the uninterrupted one drew, with no generator state to save.
- With one update per batch, old_logp is the detached current logp (ratio 1, no clipping): no
  extra forward pass.
- A non-finite loss or gradient skips the update and is logged; three in a row stop the run with
  the last good checkpoint on disk. A non-finite micro-batch loss still goes backward: its NaN reaches
  the summed loss and gradient on every rank, so every rank skips the same update.
- Under torchrun each rank takes a contiguous block of the step's prompts (whole groups, so the
  advantages are exact), divides its loss by the whole step's normaliser, and the gradients are summed
  once per update (common/dist.py): the update is the single-process one. One process reads the same.
  With --fsdp the weights, gradients and AdamW state are sharded (lm/sharding.py): sampling runs on a
  gathered copy, and completions with advantage 0 are trained (adding exactly 0), not skipped, so
  every rank runs the same forward and backward passes (each is a collective).
"""
import copy
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from common import dist
from common.memory import Parked, activation_offload, peak_memory_gib, print_plan
from common.optim import clipped_step, make_optimizer, make_scheduler, stop_after_bad_steps, time_is_up
from common.runlog import REDRAW_SECONDS, append_jsonl, open_run, phase_clock, plot_metrics, summary
from common.trackers import start as start_trackers
from evaluation import eval_metrics
from grpo.advantages import group_advantages
from grpo.batch import sample_step
from grpo.config import GRPOConfig  # noqa: F401  (run.py finds it here)
from grpo.curriculum import PassRateCurriculum
from grpo.loss import grpo_loss, sampler_mismatch
from lm import checkpoint as ckpt
from lm import load_model, lora, sharding, token_logprobs
from lm.loading import enable_checkpointing, resolve_device
from lm.precision import resolve_precision
from rewards import build_rewards, events
from rewards.verify import last_boxed
from tasks import load_math

PLOT_KEYS = ["reward", "reward_std", "loss", "kl", "clip_frac", "completion_len", "truncated_frac",
             "entropy", "grad_norm", "eval/accuracy", "eval/format_rate"]
LOGS = ("metrics.jsonl", "samples.jsonl")


@dataclass
class Run:
    """What the loop holds from one step to the next (built once by `set_up`)."""
    config: GRPOConfig
    out: object                 # the run folder
    model: object
    tokenizer: object
    ref_model: object           # None unless beta > 0 without LoRA (LoRA's reference: its adapters off);
                                # a common.memory.Parked: on the device, or in host memory between uses
    precision: object           # lm/precision.py: the dtype products run in
    rows: list                  # the training prompts
    eval_rows: list
    specs: list                 # the reward functions and weights
    optimizer: object
    scheduler: object
    curriculum: object          # None unless --curriculum pass-rate
    mine: range                 # this rank's prompts of each step
    trackers: object
    bad_updates: int = 0        # non-finite updates in a row (three stop the run)


def set_up(config: GRPOConfig) -> tuple[Run, int, int]:
    """(run, the step to start from, the data position): the model (and reference), data, rewards,
    optimizer and schedule, restored from a checkpoint when resuming."""
    device = dist.init(config.device)  # several processes under torchrun; one otherwise
    mine = dist.my_slice(config.prompts_per_step, "--prompts-per-step")
    resume_from, out = ckpt.start_run(config.output_dir, config.resume, config.overwrite, LOGS)
    torch.manual_seed(config.seed)
    start_from = resume_from if resume_from and not config.use_peft else config.model  # LoRA: base + adapter
    model, tokenizer = load_model(str(start_from), dtype=config.dtype, device=device,
                                  trust_remote_code=config.trust_remote_code, training=True)
    precision = resolve_precision(config.dtype, model.device)  # float32 weights, bfloat16 compute on a GPU
    ref_model = None
    if config.use_peft:  # LoRA adapters (lm/lora.py); the reference is the model with them off
        lora.attach(model, config, resume_from, precision)
    elif config.beta > 0:  # the reference is always the starting model, also on resume; it runs forward only
        ref_model = (load_model(config.model, dtype=config.dtype, device=device)[0] if resume_from
                     else copy.deepcopy(model).to(precision.compute)).eval().requires_grad_(False)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if config.fsdp:
        sharding.shard(model, precision)
        if ref_model is not None:
            sharding.shard(ref_model)
    if ref_model is not None:  # --offload-reference: in host memory between its forward passes
        ref_model = Parked(ref_model, model.device, config.offload_reference)
    model.train()

    rows = load_math(config.dataset, "train", config.train_problems, seed=config.seed)
    eval_rows = (load_math(config.eval_dataset or config.dataset, "test", config.eval_problems, seed=config.seed)
                 if config.eval_every >= 0 else [])
    specs = build_rewards(config.reward_funcs, config.reward_weights, config.max_completion_length)
    total_updates = config.max_steps * config.num_iterations
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay, optim=config.optim,
                               offload=config.offload_optimizer)
    scheduler = make_scheduler(optimizer, config.lr_scheduler, int(config.warmup_ratio * total_updates), total_updates)
    curriculum = PassRateCurriculum(rows, config.group_size, config.seed) if config.curriculum == "pass-rate" else None
    start_step, position = 0, 0  # position: prompt slots used so far (B per sampling round)
    if resume_from:
        state = ckpt.restore_training(resume_from, model, optimizer, scheduler)
        start_step, position = state["step"], state["data_position"]
        if curriculum is not None:
            curriculum.load_state_dict(state["curriculum"])
        print(f"resumed from {resume_from} at step {start_step}")
    if dist.is_main():
        open_run(out, config, start_step if resume_from else None, logs=LOGS)
    trackers = start_trackers(config.report_to if dist.is_main() else "none", out, config)  # --report-to
    return Run(config, out, model, tokenizer, ref_model, precision, rows, eval_rows, specs, optimizer, scheduler,
               curriculum, mine, trackers), start_step, position


def sample_and_score(run: Run, step: int, position: int):
    """This rank's groups of G completions, scored (grpo/batch.py), and the sampling rounds' counts.
    With --dynamic-sampling, groups without signal are replaced by new prompts' groups."""
    run.model.eval()
    with run.precision.autocast():  # under --fsdp, sampling runs on a full copy gathered once for the step
        groups, rounds = sample_step(sharding.gathered(run.model), run.tokenizer, run.rows, run.curriculum, position,
                                     step, run.mine, run.specs, run.config)
    run.model.train()
    return groups, rounds


def advantages(groups, config: GRPOConfig, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards (N,), group-normalised advantages (N,), the loss mask (N, T))."""
    rewards = torch.tensor(groups.total, dtype=torch.float32)                     # (N,) this rank's
    adv = group_advantages(rewards, config.group_size, scale=config.scale_rewards,
                           batch_std=dist.std_over_ranks(rewards) if config.scale_rewards == "batch" else None)
    mask = groups.samples.completion_mask.clone()                                 # (N, T)
    if config.mask_truncated_completions:
        mask = mask * (~groups.samples.truncated).to(mask.dtype)[:, None]
    return rewards, adv.to(device), mask


def update(run: Run, step: int, s, adv: torch.Tensor, mask: torch.Tensor) -> dict:
    """num_iterations optimizer steps on the sampled batch `s`, each accumulated over micro-batches.
    Returns what the record needs: the loss, the loss's stats and the entropy summed over micro-batches,
    the sampler/trainer mismatch, the gradient norm, whether it stepped, the completions trained.
    `step` (1-based) names the step in the message of an update skipped for a non-finite loss."""
    config, model = run.config, run.model
    # which completions the update needs. With beta = 0, one whose advantage is 0 adds exactly nothing
    # to the loss or its gradient (-min(w * 0, clip(w) * 0) = 0): skip it. The normaliser below still
    # counts every completion, so the loss is unchanged.
    N = len(adv)
    N_all = int(dist.all_sum(N))                                                  # the whole step's completions
    trained = torch.arange(N)
    if config.beta == 0 and config.skip_zero_advantage and not config.fsdp:
        trained = trained[adv.cpu() != 0]
    micro = [trained[i:i + config.micro_batch_size] for i in range(0, len(trained), config.micro_batch_size)]
    cut = {"top_k": config.top_k, "top_p": config.top_p} if config.truncated_logprobs else {}  # what sampled
    clock = phase_clock(model.device)
    t0 = clock()

    def logps_of(m, idx, **kw):  # (n, T) log-probs of the distribution that sampled, in float32
        with run.precision.autocast():
            return token_logprobs(m, s.prompt_ids[idx], s.prompt_mask[idx], s.completion_ids[idx],
                                  s.completion_mask[idx], temperature=config.temperature,
                                  chunk_size=config.logprob_chunk_size, **cut, **kw)

    # reference and old log-probs, only when they are needed (the reference on the policy's kept set
    # under top-k / top-p: both distributions over the tokens the sampler could draw)
    ref_logp = None
    if config.beta > 0:  # LoRA's reference: the policy with its adapters off; else the reference model
        with torch.no_grad(), lora.adapters_off(model) if config.use_peft else run.ref_model.visit() as ref:
            ref_logp = [logps_of(ref, idx, kept_by=model)[0] for idx in micro]
    with torch.no_grad():
        old_logp = [logps_of(model, idx)[0] for idx in micro] if config.num_iterations > 1 else None
    # the trainer's log-probs without dropout (LoRA's), for the sampler comparison and TIS's weight:
    # they compare the sampler with the trainer, not with one forward pass's dropout noise
    plain_logp = None
    if lora.has_dropout(model):
        with torch.no_grad(), lora.dropout_off(model):
            plain_logp = [logps_of(model, idx)[0] for idx in micro]
    t_logprobs = clock()
    mark, backward, optimizer = t_logprobs, 0.0, 0.0   # seconds in the policy's passes and in the optimizer
    # the whole step's denominator on every rank: the ranks' losses add up to the full-batch loss
    normalizer = {"grpo": N_all, "dr_grpo": N_all * config.max_completion_length,
                  "dapo": max(1.0, dist.all_sum(mask.sum().item()))}[config.loss_type]
    mismatch = {"sampler_logp_gap": 0.0, "sampler_kl": 0.0}
    for iteration in range(config.num_iterations):
        step_loss, stats_sum, entropy_sum = 0.0, {}, 0.0
        for j, idx in enumerate(micro):
            with activation_offload(config.activation_offload, model.device):  # what backward needs: on the host
                logp, entropy = logps_of(model, idx, with_entropy=True)              # (n, T)
            loss, stats = grpo_loss(
                logp, old_logp[j] if old_logp is not None else logp.detach(),
                ref_logp[j] if ref_logp is not None else None, adv[idx], mask[idx],
                epsilon=config.epsilon, epsilon_high=config.epsilon_high, beta=config.beta,
                loss_type=config.loss_type, max_completion_length=config.max_completion_length,
                normalizer=normalizer, importance_sampling_level=config.importance_sampling_level,
                sampler_logp=s.sampler_logp[idx], tis_cap=config.tis_cap if config.sampler_correction == "tis" else None,
                tis_logp=plain_logp[j] if plain_logp is not None else None)
            loss.backward()
            step_loss += loss.item()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v * len(idx)
            entropy_sum += (entropy.detach() * s.completion_mask[idx]).sum().item()
            if iteration == 0:  # sampler vs trainer on the same weights (bfloat16 copies vs float32
                # master weights on a GPU, two code paths): log-prob gap, k3 estimate of KL, ratio
                trainer = plain_logp[j] if plain_logp is not None else logp.detach()
                for k, v in sampler_mismatch(s.sampler_logp[idx], trainer, s.completion_mask[idx]).items():
                    mismatch[k] = max(mismatch.get(k, 1.0), v) if k.endswith("_max") else mismatch[k] + v
        dist.sum_gradients(model)  # the full batch's gradient on every rank (0 if untrained)
        t_backward = clock()
        grad_norm, stepped = clipped_step(model, run.optimizer, run.scheduler, dist.all_sum(step_loss),
                                          config.max_grad_norm, step)
        run.bad_updates = 0 if stepped else run.bad_updates + 1
        t_end = clock()
        backward, optimizer, mark = backward + t_backward - mark, optimizer + t_end - t_backward, t_end
    # the update's phases (a GPU synchronised at each mark): the no-grad log-prob passes (reference,
    # old, without dropout), the policy's forward and backward passes, the clipped optimizer step
    times = {"time_logprobs": t_logprobs - t0, "time_backward": backward, "time_optimizer": optimizer}
    return {"loss": step_loss, "stats": stats_sum, "entropy": entropy_sum, "mismatch": mismatch,
            "grad_norm": grad_norm, "stepped": stepped, "trained": trained, "N_all": N_all, "times": times}


def step_record(step: int, groups, rewards: torch.Tensor, rounds: dict, result: dict, config: GRPOConfig,
                lr: float, times: dict) -> dict:
    """The step's metrics line, summed over ranks: rewards, loss stats, entropy, mismatch, lengths."""
    s, G, B, N_all = groups.samples, config.group_size, config.prompts_per_step, result["N_all"]
    trained, mismatch = result["trained"], result["mismatch"]
    sums = dist.sum_dicts({
        "loss": result["loss"], "reward": rewards.sum().item(), "reward_std": rewards.view(-1, G).std(1).sum().item(),
        "groups": len(groups.prompts), "trained": len(trained), "trained_tokens": s.completion_mask[trained].sum().item(),
        "entropy": result["entropy"], "sampler_logp_gap": mismatch["sampler_logp_gap"],
        "sampler_kl": mismatch["sampler_kl"], "completion_len": s.completion_mask.sum().item(),
        "truncated": s.truncated.sum().item(), **{f"reward/{k}": sum(v) for k, v in groups.per_reward.items()},
        **{f"stat/{k}": v for k, v in result["stats"].items()},
        **{f"reward_events/{k}": v for k, v in events.take().items()}})
    per_token = lambda key: sums[key] / sums["trained_tokens"] if sums["trained_tokens"] else float("nan")
    return {"step": step, "loss": sums["loss"], "lr": lr,
            "reward": sums["reward"] / N_all, "reward_std": sums["reward_std"] / sums["groups"],
            **{k: v / N_all for k, v in sums.items() if k.startswith("reward/")},
            **{k[5:]: v / sums["trained"] for k, v in sums.items() if k.startswith("stat/")},
            "entropy": per_token("entropy"), "sampler_logp_gap": per_token("sampler_logp_gap"),
            "sampler_kl": per_token("sampler_kl"),
            "sampler_ratio_max": dist.all_max(mismatch.get("sampler_ratio_max", 1.0)),
            "signal_frac": rounds["signal_groups"] / (rounds["sampling_rounds"] * B),  # groups sampled with signal
            "sampling_rounds": rounds["sampling_rounds"], "dropped_groups": rounds["dropped_groups"],
            "trained_frac": sums["trained"] / N_all, "grad_norm": result["grad_norm"].item(),
            "completion_len": sums["completion_len"] / N_all, "truncated_frac": sums["truncated"] / N_all,
            "skipped": int(not result["stepped"]), **times, "peak_memory_gib": peak_memory_gib(s.completion_ids.device),
            **{k: int(v) for k, v in sums.items() if k.startswith("reward_events/")}}


def write_step(run: Run, step: int, record: dict, groups) -> None:
    """Rank 0: the metrics line, one completion of each of the first prompts, the trackers."""
    if not dist.is_main():
        return
    G = run.config.group_size
    append_jsonl(run.out / "metrics.jsonl", record)
    gold = lambda row: last_boxed(row.get("solution") or "") or row.get("solution")  # the answer, not the working
    shown = [{"step": step, "prompt": groups.prompts[i // G]["problem"], "gold": gold(groups.prompts[i // G]),
              "completion": groups.texts[i], "reward": groups.total[i],
              **{k: v[i] for k, v in groups.per_reward.items()}}
             for i in range(0, min(run.config.log_samples * G, len(groups.texts)), G)]
    for row in shown:
        append_jsonl(run.out / "samples.jsonl", row)
    run.trackers.log(record)
    run.trackers.samples(step, shown)


def save(run: Run, step: int, position: int, final: bool) -> None:
    """A checkpoint (weights, optimizer, schedule, data position, curriculum) and the curves (at most every
    REDRAW_SECONDS, and at the run's last)."""
    ckpt.save_training(run.out, step, run.model, run.tokenizer, run.optimizer, run.scheduler,
                       {"data_position": position,
                        **({"curriculum": run.curriculum.state_dict()} if run.curriculum is not None else {})},
                       keep=run.config.keep_checkpoints)
    if dist.is_main():
        plot_metrics(run.out / "metrics.jsonl", PLOT_KEYS[:1] + [f"reward/{r.name}" for r in run.specs] + PLOT_KEYS[1:],
                     run.out / "training_curves.png", "GRPO",  # each reward's curve after the total
                     at_most_every=0 if final else REDRAW_SECONDS)


def main(config: GRPOConfig) -> dict:
    if config.plan:  # --plan: the predicted peak memory by component; nothing is loaded or trained
        print_plan(config, resolve_device(config.device))
        return {}
    run, start_step, position = set_up(config)

    def run_eval():
        with run.precision.autocast():
            return eval_metrics(run.model, run.tokenizer, run.eval_rows, config.max_completion_length, config.seed)

    first_eval = run_eval() if run.eval_rows and start_step == 0 else {}
    if first_eval and dist.is_main():
        append_jsonl(run.out / "metrics.jsonl", {"step": 0, **first_eval})
        run.trackers.log({"step": 0, **first_eval})
    last, started, clock = {}, time.perf_counter(), phase_clock(run.model.device)
    bar = tqdm(range(start_step, config.max_steps), desc="grpo", unit="step",
               initial=start_step, total=config.max_steps, disable=not dist.is_main())
    for step in bar:
        t0 = clock()
        # ---- algorithm: G completions for each of B prompts, scored
        groups, rounds = sample_and_score(run, step, position)
        position += rounds["sampling_rounds"] * config.prompts_per_step
        t_sample = clock()
        # ---- algorithm: group-relative advantages, then the update
        rewards, adv, mask = advantages(groups, config, run.model.device)
        result = update(run, step + 1, groups.samples, adv, mask)
        t_end = clock()

        # ---- plumbing: metrics, samples, checkpoints, eval
        times = {"time_sampling": t_sample - t0, "time_training": t_end - t_sample, "time_step": t_end - t0,
                 **result["times"]}
        record = step_record(step + 1, groups, rewards, rounds, result, config, run.scheduler.get_last_lr()[0], times)
        out_of_time = time_is_up(started, config.max_minutes, step + 1)
        final = step + 1 == config.max_steps or out_of_time
        if config.eval_every > 0 and (step + 1) % config.eval_every == 0 or (
                config.eval_every == 0 and run.eval_rows and final):
            record.update(run_eval())
        write_step(run, step + 1, record, groups)
        bar.set_postfix(reward=f"{record['reward']:.3f}", len=f"{record['completion_len']:.0f}")
        last = record
        stop_after_bad_steps(run.bad_updates, step + 1, ckpt.latest_checkpoint(run.out))
        if (step + 1) % config.save_every == 0 or final:
            save(run, step + 1, position, final)
        if out_of_time:
            break
    run.trackers.close()
    if dist.is_main():
        print(summary(run.out, "reward", first_eval, last, ckpt.latest_checkpoint(run.out)))
    return last
