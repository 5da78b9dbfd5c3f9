"""The `python run.py grpo` config: every flag, its default, one line of help."""
from dataclasses import dataclass

from common.config import arg
from lm.lora import LoraFlags
from lm.precision import CHOICES as DTYPES
from common.memory import ACTIVATION_OFFLOAD_HELP
from lm.precision import HELP as PRECISION_HELP
from common.optim import OFFLOAD_HELP, OPTIM_HELP, SCHEDULES, check_optim
from common.trackers import parse_report_to
from grpo.advantages import SCALES
from grpo.loss import LOSS_TYPES
from rewards import parse_names_and_weights


@dataclass
class GRPOConfig(LoraFlags):
    # model and data
    model: str = arg("smollm2-135m", "policy to start from: built-in name, checkpoint folder or hub id")
    dataset: str = arg("arithmetic", "math prompts: arithmetic[:levels], a local file, or a hub id")
    train_problems: int = arg(5000, "size of the training prompt pool (built-in task) / row limit")
    # sampling
    group_size: int = arg(8, "completions per prompt, G (alias --num-generations)",
                          aliases=["--num-generations", "--num_generations"])
    prompts_per_step: int = arg(4, "prompts per step, B; a step trains on N = B * G completions")
    max_completion_length: int = arg(128, "token budget per completion")
    temperature: float = arg(1.0, "sampling temperature; training log-probs use the same one")
    top_p: float = arg(1.0, "nucleus sampling threshold")
    top_k: int = arg(0, "keep only the k most likely tokens (0: all)")
    # rewards and advantages
    reward_funcs: str = arg("accuracy,format", "comma-separated reward names (see rewards/__init__.py)")
    reward_weights: str = arg("", "comma-separated weights, one per reward (empty: all 1)")
    scale_rewards: str = arg("group", "advantage scaling: group (GRPO), batch, or none (Dr. GRPO)")
    mask_truncated_completions: bool = arg(False, "exclude completions that hit the budget from the loss (DAPO)")
    # loss
    loss_type: str = arg("grpo", "token averaging: grpo (per-sequence mean), dr_grpo, dapo")
    beta: float = arg(0.0, "weight of the k3 KL to the reference model (0: no reference model)")
    offload_reference: bool = arg(False, "with beta > 0 on a GPU: the reference model waits in host memory "
                                  "(pinned) and visits the GPU for its forward pass each step, so the update "
                                  "does not hold it (on a CPU it is in host memory already)")
    epsilon: float = arg(0.2, "clip range below (and above unless --epsilon-high)")
    epsilon_high: float | None = arg(None, "clip range above (DAPO clip-higher, e.g. 0.28)")
    importance_sampling_level: str = arg("token", "token (GRPO) or sequence (GSPO) importance ratios")
    num_iterations: int = arg(1, "updates per sampled batch, mu (>1 computes old log-probs)")
    skip_zero_advantage: bool = arg(True, "with beta 0, leave completions whose advantage is 0 out of the "
                                    "forward/backward (exact: they add nothing to the loss or gradient)")
    # optimisation
    dynamic_sampling: bool = arg(False, "drop groups whose rewards are all equal and sample new prompts in "
                                 "their place (DAPO's dynamic sampling, arXiv 2503.14476, section 3.2)")
    max_sampling_rounds: int = arg(3, "with --dynamic-sampling: extra sampling rounds per step at most")
    curriculum: str = arg("none", "none, or pass-rate: draw prompts whose estimated pass rate makes a group "
                          "most likely to carry signal (grpo/curriculum.py; needs the accuracy reward)")
    truncated_logprobs: bool = arg(True, "with --top-k/--top-p: train the truncated distribution that sampled "
                                   "(--no-truncated-logprobs: the full softmax, as TRL and verl do)")
    sampler_correction: str = arg("none", "none, or tis: weight each token's policy-gradient term by "
                                  "min(pi_trainer / pi_sampler, --tis-cap) (truncated importance sampling, "
                                  "Yao et al. 2025, 'Your efficient RL framework secretly brings you off-policy RL')")
    tis_cap: float = arg(2.0, "with --sampler-correction tis: the cap on the importance weight")
    learning_rate: float = arg(2e-6, "peak learning rate (AdamW)")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    warmup_ratio: float = arg(0.0, "share of optimizer steps spent warming up linearly")
    lr_scheduler: str = arg("constant", "constant, linear or cosine decay after warmup", aliases=["--lr-scheduler-type", "--lr_scheduler_type"])
    max_grad_norm: float = arg(1.0, "clip the gradient norm to this (0: no clipping)")
    max_steps: int = arg(50, "sampling steps to train for")
    max_minutes: float = arg(0.0, "stop (with a checkpoint) after the step that passes this wall-clock budget; 0: none")
    micro_batch_size: int = arg(8, "sequences per forward/backward (gradient accumulation)")
    gradient_checkpointing: bool = arg(False, "recompute activations in the backward pass to save memory")
    activation_offload: bool = arg(False, ACTIVATION_OFFLOAD_HELP)
    report_to: str = arg("none", "experiment trackers besides metrics.jsonl: none, tensorboard, wandb, trackio "
                         "(comma-separated for several; common/trackers.py)")
    fsdp: bool = arg(False, "shard weights, gradients and AdamW state over the torchrun processes (FSDP2)")
    logprob_chunk_size: int = arg(1024, "token positions per chunk of the output layer")
    # plumbing
    dtype: str = arg("auto", PRECISION_HELP)
    optim: str = arg("adamw_torch", OPTIM_HELP)
    offload_optimizer: bool = arg(False, OFFLOAD_HELP)
    device: str = arg("auto", "auto, cpu, cuda")
    seed: int = arg(0, "seed for data order, sampling and the eval split")
    output_dir: str = arg("runs/grpo", "where config, metrics, samples, checkpoints and plots go")
    save_every: int = arg(25, "checkpoint every k steps (and at the end)", aliases=["--save-steps", "--save_steps"])
    keep_checkpoints: int = arg(2, "how many recent checkpoints to keep",
                                aliases=["--save-total-limit", "--save_total_limit"])
    eval_every: int = arg(0, "run the held-out eval every k steps (0: before and after only; -1: never)")
    eval_dataset: str = arg("", "held-out dataset for eval (empty: the training dataset's test split; a local "
                                  "file's test split is a fixed tenth of its rows that training never sees)")
    eval_problems: int = arg(100, "held-out problems per eval")
    log_samples: int = arg(2, "decoded completions per step written to samples.jsonl")
    resume: str = arg("", "a run folder (or checkpoint folder) to continue exactly")
    plan: bool = arg(False, "print the predicted peak memory of this run by component on this device (GPU memory "
                            "or RAM), what fits, and train nothing")
    overwrite: bool = arg(False, "start afresh in an --output-dir that holds another run: removes its "
                          "checkpoints and logs (without it such a folder is refused)")
    trust_remote_code: bool = arg(False, "allow model code from the hub")

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"--group-size {self.group_size}: GRPO compares completions, use at least 2")
        if self.temperature <= 0:
            raise ValueError("--temperature must be > 0: GRPO trains the distribution it samples from")
        checks = [(self.scale_rewards, SCALES, "--scale-rewards"), (self.loss_type, LOSS_TYPES, "--loss-type"),
                  (self.lr_scheduler, SCHEDULES, "--lr-scheduler"),
                  (self.importance_sampling_level, ("token", "sequence"), "--importance-sampling-level")]
        for value, choices, flag in checks:
            if value not in choices:
                raise ValueError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
        for flag in ("prompts_per_step", "max_completion_length", "max_steps", "micro_batch_size",
                     "num_iterations", "save_every"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        check_optim(self.optim, self.fsdp, self.offload_optimizer)
        for value, choices, flag in ((self.curriculum, ("none", "pass-rate"), "--curriculum"),
                                     (self.sampler_correction, ("none", "tis"), "--sampler-correction")):
            if value not in choices:
                raise ValueError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
        if self.curriculum == "pass-rate" and "accuracy" not in self.reward_funcs.split(","):
            raise ValueError("--curriculum pass-rate estimates pass rates from the accuracy reward: add it to "
                             "--reward-funcs (its weight may be 0)")
        if self.tis_cap <= 0 or self.max_sampling_rounds < 0:
            raise ValueError("--tis-cap must be > 0 and --max-sampling-rounds >= 0")
        cut = self.top_k > 0 or self.top_p < 1.0
        if self.use_peft and (self.fsdp or (self.beta > 0 and cut and self.truncated_logprobs)):
            raise ValueError("--use-peft is not supported with --fsdp, nor with beta > 0 and truncated sampling (the "
                             "reference is the model with its adapters off, the kept set the model's with them on)")
        if self.fsdp and (self.dynamic_sampling or (self.beta > 0 and cut and self.truncated_logprobs)):
            raise ValueError("--fsdp runs every rank through the same passes: not with --dynamic-sampling (ranks keep "
                             "different numbers of groups), nor with beta > 0 and truncated sampling (the reference "
                             "is scored on the policy's kept set, which needs both models in one pass)")
        if self.offload_reference and (self.beta <= 0 or self.use_peft or self.fsdp):
            raise ValueError("--offload-reference needs a reference model of its own: beta > 0, and not with "
                             "--use-peft (the reference is the policy with its adapters off) nor --fsdp (sharded)")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues a run and --overwrite removes one: choose one")
        parse_names_and_weights(self.reward_funcs, self.reward_weights)
        parse_report_to(self.report_to)
