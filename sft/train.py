"""`python run.py sft`: supervised fine-tuning on conversations, packed, top to bottom.

    conversations -> tokenise (loss on assistant tokens, EOS included) -> best-fit packed rows
    each epoch: shuffle the rows; each optimizer step takes batch_size x grad_accum rows:
        for each micro-batch: loss = sum of -log p over its trained tokens / the step's token count
                              backward (the micro-batch losses add up to the step's token mean)
        clip grad norm, optimizer step, LR schedule (warmup, cosine)
    metrics line (loss, lr, tokens, tokens/s), checkpoint every k steps, eval every k steps

Cold start (R1 stage 1) is this loop on the built-in task's worked solutions (the default data);
R1 stage 2 is this loop on rejection-sampled answers (a JSONL of prompt/completion pairs).
"""
import time
from dataclasses import dataclass

from tqdm import tqdm

from common import dist
from common.config import arg
from common.memory import ACTIVATION_OFFLOAD_HELP, activation_offload, peak_memory_gib, print_plan
from lm.loading import enable_checkpointing, resolve_device
from common.optim import clipped_step, make_optimizer, make_scheduler, stop_after_bad_steps, time_is_up
from common.runlog import REDRAW_SECONDS, append_jsonl, open_run, plot_metrics, summary
from common.trackers import start as start_trackers
from evaluation import eval_metrics
from lm import checkpoint as ckpt
from lm import load_model, lora, sharding
from lm.precision import resolve_precision
from sft.loss import sft_loss
from sft.data import PackedTrainingFlags, prepare
from tasks import load_math

PLOT_KEYS = ["loss", "lr", "grad_norm", "tokens_per_second", "eval/accuracy", "eval/format_rate"]


@dataclass
class SFTConfig(PackedTrainingFlags):
    model: str = arg("smollm2-135m", "model to fine-tune: built-in name, checkpoint folder or hub id")
    overflow: str = arg("truncate", "an example longer than --max-length: truncate or drop")
    num_epochs: float = arg(1.0, "passes over the data (when --max-steps is 0)")
    max_steps: int = arg(0, "optimizer steps (0: from --num-epochs)")
    gradient_checkpointing: bool = arg(False, "recompute activations in the backward pass to save memory")
    activation_offload: bool = arg(False, ACTIVATION_OFFLOAD_HELP)

    def __post_init__(self):
        super().__post_init__()
        if self.overflow not in ("truncate", "drop"):
            raise ValueError(f"--overflow {self.overflow!r}: choose truncate or drop")


def main(config: SFTConfig) -> dict:
    if config.plan:  # --plan: the predicted peak memory by component; nothing is loaded or trained
        print_plan(config, resolve_device(config.device))
        return {}
    device = dist.init(config.device)  # several processes under torchrun; one otherwise
    mine = dist.my_slice(config.gradient_accumulation_steps, "--gradient-accumulation-steps")  # this rank's
    resume_from, out = ckpt.start_run(config.output_dir, config.resume, config.overwrite)
    start_from = resume_from if resume_from and not config.use_peft else config.model  # LoRA: base + adapter
    model, tokenizer = load_model(str(start_from), dtype=config.dtype, device=device, training=True)
    precision = resolve_precision(config.dtype, model.device)
    if config.use_peft:  # LoRA adapters (lm/lora.py)
        lora.attach(model, config, resume_from, precision)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    if config.fsdp:  # weights, gradients and AdamW state split over the ranks
        sharding.shard(model, precision)

    # ---- data: tokenise, pack (or not), count what did not fit
    stream, report, n_units = prepare(tokenizer, config.dataset, config.train_examples, config.max_length,
                                      config.overflow, config.packing, config.batch_size, config.seed)
    steps_per_epoch = max(1, stream.per_epoch // config.gradient_accumulation_steps)
    total_steps = config.max_steps or max(1, int(config.num_epochs * steps_per_epoch))
    dist.is_main() and print(f"{report.kept} examples ({report.truncated} truncated, {report.dropped} dropped at "
          f"--max-length {config.max_length}) in {n_units} {'packed rows' if config.packing else 'rows'}; "
          f"{total_steps} steps")

    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay, optim=config.optim,
                               offload=config.offload_optimizer)
    scheduler = make_scheduler(optimizer, config.lr_scheduler, int(config.warmup_ratio * total_steps), total_steps)
    start_step = ckpt.restore_training(resume_from, model, optimizer, scheduler)["step"] if resume_from else 0
    if dist.is_main():
        open_run(out, config, start_step if resume_from else None)
    trackers = start_trackers(config.report_to if dist.is_main() else "none", out, config)  # --report-to
    eval_rows = load_math(config.eval_dataset, "test", config.eval_problems) if config.eval_every >= 0 else []

    def run_eval():
        with precision.autocast():
            return eval_metrics(model, tokenizer, eval_rows, config.eval_max_new_tokens)

    first_eval = run_eval() if eval_rows and start_step == 0 else {}
    if first_eval and dist.is_main():
        append_jsonl(out / "metrics.jsonl", {"step": 0, **first_eval,
                                             "examples_truncated": report.truncated, "examples_dropped": report.dropped})
        trackers.log({"step": 0, **first_eval})
    model.train()
    position = start_step * config.gradient_accumulation_steps  # micro-batches consumed so far
    last, bad_steps, started = {}, 0, time.perf_counter()
    bar = tqdm(range(start_step, total_steps), desc="sft", unit="step", initial=start_step, total=total_steps,
               disable=not dist.is_main())
    for step in bar:
        t0 = time.perf_counter()
        # ---- plumbing: this rank's micro-batches of the step (the data stream is endless and reproducible)
        micro = [stream[position + i] for i in mine]
        position += config.gradient_accumulation_steps
        # ---- algorithm: token-weighted mean NLL over the whole step (all ranks), accumulated
        n_targets = int(dist.all_sum(sum(b.num_targets for b in micro)))
        loss_sum = 0.0
        for batch in micro:
            with precision.autocast(), activation_offload(config.activation_offload, model.device):
                loss = sft_loss(model, batch, normalizer=max(1, n_targets))
            loss.backward()
            loss_sum += loss.item()
        loss_sum = dist.all_sum(loss_sum)
        dist.sum_gradients(model)
        grad_norm, stepped = clipped_step(model, optimizer, scheduler, loss_sum, config.max_grad_norm, step + 1)
        bad_steps = 0 if stepped else bad_steps + 1
        # ---- plumbing: metrics, checkpoints, eval
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, "loss": loss_sum, "lr": scheduler.get_last_lr()[0],
                  "grad_norm": grad_norm.item(), "tokens": n_targets,
                  "tokens_input": int(dist.all_sum(sum(b.num_tokens for b in micro))),
                  "tokens_per_second": n_targets / seconds, "epoch": position / stream.per_epoch,
                  "skipped": int(not stepped), "time_step": seconds, "peak_memory_gib": peak_memory_gib(model.device)}
        out_of_time = time_is_up(started, config.max_minutes, step + 1)
        final = step + 1 == total_steps or out_of_time
        if (config.eval_every > 0 and (step + 1) % config.eval_every == 0) or (
                config.eval_every == 0 and eval_rows and final):
            record.update(run_eval())
        if dist.is_main():
            append_jsonl(out / "metrics.jsonl", record)
            trackers.log(record)
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
        last = record
        stop_after_bad_steps(bad_steps, step + 1, ckpt.latest_checkpoint(out))
        if (step + 1) % config.save_every == 0 or final:
            ckpt.save_training(out, step + 1, model, tokenizer, optimizer, scheduler, {"data_position": position},
                               keep=config.keep_checkpoints)
            if dist.is_main():
                plot_metrics(out / "metrics.jsonl", PLOT_KEYS, out / "training_curves.png", "SFT",
                             at_most_every=0 if final else REDRAW_SECONDS)
        if out_of_time:
            break
    trackers.close()
    if dist.is_main():
        print(summary(out, "loss", first_eval, last, ckpt.latest_checkpoint(out)))
    return last
