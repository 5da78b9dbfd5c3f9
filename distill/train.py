"""`python run.py distill`: logit distillation from a teacher into a smaller student, top to bottom.

    teacher (inference mode) and student share a tokenizer (checked at start-up)
    the SFT data path: conversations -> packed rows -> micro-batches
      (--on-policy: the student's own completions of the conversations' prompts, distill/onpolicy.py,
       trained with the divergence alone: alpha 1, temperature 1)
    each optimizer step, for each micro-batch:
        student and teacher logits at the labelled positions only     (M, V) each
        loss = alpha T^2 KD(teacher || student at T) + (1 - alpha) CE  (distill/loss.py),
               averaged over the step's labelled tokens, backward
    clip grad norm, optimizer step, LR schedule; metrics, checkpoints, eval as in SFT

A student can be cut from the teacher by keeping some of its layers (--student-from-teacher-layers
15 keeps 15 evenly spaced layers, first and last included; "0,2,4" keeps those; greedy:20 drops the
layers the teacher needs least, distill/student.py), the usual way to start a smaller student; any
other model with the same tokenizer works too (--student).
"""
import json
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from common import dist
from common.config import arg
from common.memory import peak_memory_gib, print_plan
from lm.loading import resolve_device
from common.optim import clipped_step, make_optimizer, make_scheduler, stop_after_bad_steps, time_is_up
from common.runlog import REDRAW_SECONDS, append_jsonl, open_run, plot_metrics, summary
from common.trackers import start as start_trackers
from distill.loss import KINDS, distillation_loss
from distill.onpolicy import is_on_policy, student_batch
from distill.student import cut_student
from evaluation import eval_metrics
from lm import checkpoint as ckpt
from lm import load_model, lora, sharding
from lm.precision import resolve_precision
from lm.logprobs import hidden_states
from sft.data import PackedTrainingFlags, prepare
from tasks import load_conversations, load_math

PLOT_KEYS = ["loss", "kd", "ce", "lr", "grad_norm", "eval/accuracy", "eval/format_rate"]


@dataclass
class DistillConfig(PackedTrainingFlags):
    teacher: str = arg("smollm2-135m", "teacher model: built-in name, checkpoint folder or hub id")
    student: str = arg("", "student model (empty: cut from the teacher, see --student-from-teacher-layers)")
    student_from_teacher_layers: str = arg("", "keep these teacher layers for the student: a count "
                                           "(evenly spaced), a list like 0,2,4, or greedy:N (drop the least "
                                           "needed layers one by one, distill/student.py; default: half)")
    temperature: float = arg(3.0, "softmax temperature on both sides of the KD term")
    alpha: float = arg(0.7, "weight of the KD term; 1 - alpha goes to the cross-entropy with the labels "
                       "(0: plain SFT of the student, the baseline to compare with)")
    kind: str = arg("", "forward_kl, reverse_kl or jsd (default: forward_kl; reverse_kl with --on-policy)")
    beta: float = arg(0.5, "JSD weight (kind jsd): 0 is forward KL, 1 reverse KL")
    on_policy: bool = arg(False, "distil on the student's own samples: the divergence at every position of its "
                          "completions, no cross-entropy (GKD with lambda 1, arXiv 2306.13649; distill/onpolicy.py)")
    off_policy_fraction: float = arg(0.0, "with --on-policy: the share of micro-batches taken from the SFT data "
                                     "with the usual loss instead")
    on_policy_prompts: int = arg(8, "with --on-policy: prompts per micro-batch, one completion each")
    on_policy_max_new_tokens: int = arg(128, "with --on-policy: token budget of the student's completions")
    on_policy_temperature: float = arg(1.0, "with --on-policy: the student's sampling temperature")
    # defaults that differ from SFT's
    max_length: int = arg(1024, "tokens per packed row")
    gradient_accumulation_steps: int = arg(4, "micro-batches per optimizer step")
    learning_rate: float = arg(1e-4, "peak learning rate (AdamW)")
    warmup_ratio: float = arg(0.1, "share of steps spent warming up linearly")
    max_steps: int = arg(30, "optimizer steps")
    output_dir: str = arg("runs/distill", "where config, metrics, checkpoints and plots go")

    def __post_init__(self):
        super().__post_init__()
        self.kind = self.kind or ("reverse_kl" if self.on_policy else "forward_kl")
        if not 0 <= self.off_policy_fraction <= 1 or self.on_policy_temperature <= 0 or self.on_policy_prompts < 1:
            raise ValueError("--off-policy-fraction must lie in [0, 1], --on-policy-temperature be > 0 and "
                             "--on-policy-prompts >= 1")
        if self.kind not in KINDS:
            raise ValueError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not 0 <= self.alpha <= 1 or not 0 <= self.beta <= 1 or self.temperature <= 0:
            raise ValueError("--alpha and --beta must lie in [0, 1] and --temperature be > 0")


def check_same_tokenizer(teacher_tok, student_tok, teacher: str, student: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ValueError(f"teacher {teacher} and student {student} have different vocabularies "
                         f"({len(teacher_tok)} vs {len(student_tok)} tokens): logit distillation needs one tokenizer")


@sharding.entry
def logits_at_targets(model, batch, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, V) logits at the positions that have a target, and the (M,) targets."""
    hidden = hidden_states(model, batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                           attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device))
    keep = batch.targets.to(device) != -100
    return model.get_output_embeddings()(hidden[keep]), batch.targets.to(device)[keep]


def step_batches(student, tokenizer, stream, prompt_rows, mine, step: int, precision, config) -> tuple[list, list]:
    """(this rank's micro-batches of the step, whether each is the student's own sample). Without
    --on-policy the SFT data's rows; with it, a keyed draw picks which slots are the student's completions
    of the task's prompts (distill/onpolicy.py), all sampled before any update of the step."""
    accum = config.gradient_accumulation_steps
    slots = [step * accum + i for i in mine]
    on = [config.on_policy and is_on_policy(config.seed, step, slot, config.off_policy_fraction) for slot in slots]
    if not config.on_policy:
        return [stream[slot] for slot in slots], on
    student.eval()
    with precision.autocast():
        policy = sharding.gathered(student)  # under --fsdp a full copy, once for the step
        micro = [student_batch(policy, tokenizer, prompt_rows, config.seed, step, slot, config.on_policy_prompts,
                               config.on_policy_max_new_tokens, config.on_policy_temperature) if o
                 else stream[slot] for slot, o in zip(slots, on)]
    student.train()
    return micro, on


def accumulate(student, teacher, micro: list, on: list, n_targets: int, precision, config) -> dict:
    """Backward of each micro-batch's distillation loss (divided by the step's `n_targets`); returns
    this rank's summed loss, kd and ce."""
    totals = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
    for batch, student_sampled in zip(micro, on):
        # on the student's samples: the divergence alone, at temperature 1 (no labels to imitate)
        alpha, temperature = (1.0, 1.0) if student_sampled else (config.alpha, config.temperature)
        # teacher and student distributions at the labelled positions
        with precision.autocast():
            student_logits, targets = logits_at_targets(student, batch, student.device)
            if alpha > 0:
                with torch.inference_mode():
                    teacher_logits = logits_at_targets(teacher, batch, student.device)[0].clone()
            else:  # alpha 0 is plain SFT of the student: the KD term has weight 0, no teacher pass
                teacher_logits = student_logits.detach()
        loss, stats = distillation_loss(student_logits[None], teacher_logits[None], targets[None],
                                        temperature=temperature, alpha=alpha, kind=config.kind,
                                        beta=config.beta, normalizer=n_targets)
        loss.backward()
        totals["loss"] += loss.item()
        totals["kd"] += stats["kd"]
        totals["ce"] += stats["ce"]
    return totals


def main(config: DistillConfig) -> dict:
    if config.plan:  # --plan: the predicted peak memory by component; nothing is loaded or trained
        print_plan(config, resolve_device(config.device))
        return {}
    device = dist.init(config.device)  # several processes under torchrun; one otherwise
    mine = dist.my_slice(config.gradient_accumulation_steps, "--gradient-accumulation-steps")  # this rank's
    resume_from, out = ckpt.start_run(config.output_dir, config.resume, config.overwrite)
    teacher, tokenizer = load_model(config.teacher, dtype=config.dtype, device=device)  # forward only
    teacher.requires_grad_(False)
    precision = resolve_precision(config.dtype, teacher.device)
    stream, report, n_units = prepare(tokenizer, config.dataset, config.train_examples, config.max_length,
                                      "truncate", config.packing, config.batch_size, config.seed)
    saved = resume_from if resume_from and not config.use_peft else None  # LoRA resumes from base + adapter
    layers = None
    if saved or config.student:
        student, student_tok = load_model(str(saved or config.student), dtype=config.dtype, device=device,
                                          training=True)
        check_same_tokenizer(tokenizer, student_tok, config.teacher, str(saved or config.student))
    else:  # cut from the teacher (distill/student.py); the layers kept go to student.json
        student, layers = cut_student(teacher, config.student_from_teacher_layers, stream[0],
                                      print if dist.is_main() else lambda _: None)
        student = student.to(precision.weights)
        if dist.is_main():
            print(f"student: teacher layers {layers} ({sum(p.numel() for p in student.parameters()) / 1e6:.1f}M "
                  f"parameters, teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M)")
    if config.use_peft:  # LoRA adapters on the student (lm/lora.py)
        lora.attach(student, config, resume_from, precision)
    if config.fsdp:  # the student's weights, gradients and AdamW state split over the ranks; the teacher's weights
        sharding.shard(student, precision)
        sharding.shard(teacher)
    prompt_rows = (load_conversations(config.dataset, "train", config.train_examples, seed=config.seed)
                   if config.on_policy else [])  # --on-policy: their prompts, without the answers
    optimizer = make_optimizer(student, config.learning_rate, config.weight_decay, optim=config.optim,
                               offload=config.offload_optimizer)
    scheduler = make_scheduler(optimizer, config.lr_scheduler, int(config.warmup_ratio * config.max_steps),
                               config.max_steps)
    start_step = ckpt.restore_training(resume_from, student, optimizer, scheduler)["step"] if resume_from else 0
    if dist.is_main():
        open_run(out, config, start_step if resume_from else None)
        if layers:
            (out / "student.json").write_text(json.dumps({"teacher": config.teacher, "layers": layers}))
    trackers = start_trackers(config.report_to if dist.is_main() else "none", out, config)  # --report-to
    eval_rows = load_math(config.eval_dataset, "test", config.eval_problems) if config.eval_every >= 0 else []

    def run_eval():
        with precision.autocast():
            return eval_metrics(student, tokenizer, eval_rows, config.eval_max_new_tokens)

    first_eval = run_eval() if eval_rows and start_step == 0 else {}
    if first_eval:
        if dist.is_main():
            append_jsonl(out / "metrics.jsonl", {"step": 0, **first_eval})
            trackers.log({"step": 0, **first_eval})
    student.train()
    accum, last, bad_steps = config.gradient_accumulation_steps, {}, 0
    started = time.perf_counter()
    bar = tqdm(range(start_step, config.max_steps), desc="distill", unit="step", initial=start_step,
               total=config.max_steps, disable=not dist.is_main())
    for step in bar:
        t0 = time.perf_counter()
        # ---- this rank's micro-batches: the SFT data's, or (--on-policy) the student's own completions
        micro, on = step_batches(student, tokenizer, stream, prompt_rows, mine, step, precision, config)
        t_sampled = time.perf_counter()
        # ---- algorithm: the distillation loss, accumulated over the micro-batches with the step's normaliser
        n_targets = max(1, int(dist.all_sum(sum(b.num_targets for b in micro))))  # the whole step's
        totals = accumulate(student, teacher, micro, on, n_targets, precision, config)
        totals = dist.sum_dicts(totals)
        dist.sum_gradients(student)
        grad_norm, stepped = clipped_step(student, optimizer, scheduler, totals["loss"], config.max_grad_norm, step + 1)
        bad_steps = 0 if stepped else bad_steps + 1
        # ---- plumbing: metrics, checkpoints, eval
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, **totals, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                  "tokens": n_targets, "tokens_per_second": n_targets / seconds, "skipped": int(not stepped),
                  "on_policy_frac": dist.all_sum(sum(on)) / accum, "time_sampling": t_sampled - t0,
                  "time_step": seconds, "peak_memory_gib": peak_memory_gib(student.device)}
        out_of_time = time_is_up(started, config.max_minutes, step + 1)
        final = step + 1 == config.max_steps or out_of_time
        if (config.eval_every > 0 and (step + 1) % config.eval_every == 0) or (
                config.eval_every == 0 and eval_rows and final):
            record.update(run_eval())
        if dist.is_main():
            append_jsonl(out / "metrics.jsonl", record)
            trackers.log(record)
        bar.set_postfix(loss=f"{totals['loss']:.3f}", kd=f"{totals['kd']:.3f}")
        last = record
        stop_after_bad_steps(bad_steps, step + 1, ckpt.latest_checkpoint(out))
        if (step + 1) % config.save_every == 0 or final:
            ckpt.save_training(out, step + 1, student, tokenizer, optimizer, scheduler,
                               {"data_position": (step + 1) * accum}, keep=config.keep_checkpoints)
            if dist.is_main():
                plot_metrics(out / "metrics.jsonl", PLOT_KEYS, out / "training_curves.png", "distillation",
                             at_most_every=0 if final else REDRAW_SECONDS)
        if out_of_time:
            break
    trackers.close()
    if dist.is_main():
        print(summary(out, "loss", first_eval, last, ckpt.latest_checkpoint(out)))
    return last
