"""What a run holds in memory: the peak it reached (logged every step as `peak_memory_gib`).

On a GPU the peak is `torch.cuda.max_memory_allocated` (tensors only: the CUDA context and the
allocator's cache come on top); on a CPU the process's peak resident set (`ru_maxrss`: every byte the
process has touched, the Python interpreter, libraries and loading included). Under torchrun the
largest of the ranks' peaks.
"""
import resource
import sys
from contextlib import contextmanager, nullcontext

import torch

from common import dist


def peak_memory_gib(device: torch.device | str = "cpu") -> float:
    """This process's peak so far, in GiB (see the module docstring); the largest over ranks."""
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        scale = 1 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return round(dist.all_max(peak / 2 ** 30), 3)


ACTIVATION_OFFLOAD_HELP = ("keep the activations the backward pass needs in host memory (pinned) instead of on the "
                           "GPU, copied back as the backward pass reaches them: long completions in less GPU "
                           "memory, for transfer time (on a CPU nothing moves)")


def activation_offload(on: bool, device: torch.device):
    """`--activation-offload`: a context in which the tensors a forward pass keeps for its backward pass
    wait in host memory (pinned on a GPU) and return to the device when the backward pass reaches them
    (torch.autograd.graph.save_on_cpu): a micro-batch's activations cost host memory and transfer time
    instead of device memory. On a CPU they already are in host memory: nothing moves. Under gradient
    checkpointing what it keeps, each layer's input, goes to the host (the recomputed layer's own tensors
    are saved, and offloaded, only during its recomputation)."""
    if not on:
        return nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.device(device).type == "cuda")


class Parked:
    """A frozen model that, with `offload`, waits in host memory (pinned) between uses: `with
    parked.visit() as m:` copies its weights and buffers to `device` for the block and drops those copies
    after it, so the model costs device memory only while it runs. Without `offload`, or on a CPU (host
    memory already), nothing moves."""

    def __init__(self, model, device: torch.device, offload: bool):
        self.model, self.device = model, torch.device(device)
        self.moves = offload and self.device.type != "cpu"
        self.tensors = [*model.parameters(), *model.buffers()]
        if self.moves:
            for t in self.tensors:
                t.data = t.data.to("cpu").pin_memory()

    @contextmanager
    def visit(self):
        if not self.moves:
            yield self.model
            return
        host = [t.data for t in self.tensors]
        for t, h in zip(self.tensors, host):
            t.data = h.to(self.device, non_blocking=True)
        try:
            yield self.model
        finally:
            for t, h in zip(self.tensors, host):
                t.data = h


# ---- the plan: the predicted peak before a run, by component (`--plan`)

GiB = 2 ** 30
PROCESS_CPU = 0.70 * GiB   # the interpreter, torch, transformers and a tokenizer on a CPU (measured here)
PROMPT_TOKENS = 160        # a chat-templated R1 prompt with a short problem


def meta_model(name: str, trust_remote_code: bool = False):
    """The model `name` names, built on the meta device: its shapes, no weights read or allocated."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from lm.loading import BUILTIN, builtin_model_dir, tiny_model
    if name == "tiny":
        config = tiny_model().config
    else:
        config = AutoConfig.from_pretrained(builtin_model_dir() if name == BUILTIN else name,
                                            trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def model_counts(model, lora_r: int = 0, lora_targets: str = "all-linear") -> dict:
    """Parameter counts the plan needs: all, the decoder layers' matrices (what the sampler copies),
    the output layer's, and the trainable ones (LoRA: r x (in + out) for each adapted linear layer)."""
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    layers = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    single = sum(p.numel() for n, p in model.named_parameters()   # the sampler's unfused matrices
                 if n.endswith(("o_proj.weight", "down_proj.weight")))
    trainable, adapted_inputs = total, 0
    if lora_r:
        names = None if lora_targets == "all-linear" else {t.strip() for t in lora_targets.split(",")}
        adapted = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n
                   and (names is None or n.rsplit(".", 1)[-1] in names)]
        trainable = sum(lora_r * (m.in_features + m.out_features) for m in adapted)
        adapted_inputs = sum(m.in_features for m in adapted)
    return {"total": total, "layers": layers, "head": head, "single": single, "trainable": trainable,
            "adapted_inputs": adapted_inputs}


def lora_dropout_bytes(config, n: dict, tokens: int, compute_bytes: int) -> float:
    """LoRA with dropout: peft drops each adapted layer's input into a copy of its own, kept for the
    backward pass with its mask (a byte a value): (compute bytes + 1) x the adapted layers' inputs a token."""
    if not (config.use_peft and config.lora_dropout > 0):
        return 0.0
    return tokens * n["adapted_inputs"] * (compute_bytes + 1)


def activation_bytes(config, tokens: int, context: int, compute_bytes: int, checkpointing: bool,
                     offloaded: bool = False) -> float:
    """Saved activations of one forward pass over `tokens` completion tokens that attend over `context`
    positions: about (32 + 4 context / T) H + 8 I bytes a token a layer in bfloat16 (16 H-sized and 4
    I-sized tensors kept for the backward pass), twice that in float32. With checkpointing: each
    layer's input, and one layer's activations at a time. Offloaded to the host (`activation_offload`
    on a GPU, with or without checkpointing): one layer's at a time on the device."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = tokens * ((32 + 4 * context / max(1, tokens)) * H + 8 * I) * compute_bytes / 2
    if offloaded:
        return per_layer
    return tokens * H * compute_bytes * L + per_layer if checkpointing else per_layer * L


def micro_batch_activations(config, mc, n: dict, tokens: int, context: int, compute_bytes: int,
                            device: torch.device) -> float:
    """`activation_bytes` under the config's flags (checkpointing; offloading, which moves them only off
    a GPU), plus LoRA's dropout copies: one layer's of them when one layer's activations are on the device."""
    checkpointing = getattr(config, "gradient_checkpointing", False)   # grpo and sft have these, distill not
    offloaded = getattr(config, "activation_offload", False) and device.type == "cuda"
    layers = 1 if checkpointing or offloaded else mc.num_hidden_layers
    return (activation_bytes(mc, tokens, context, compute_bytes, checkpointing, offloaded)
            + lora_dropout_bytes(config, n, tokens, compute_bytes) * layers / mc.num_hidden_layers)


def state_parts(config, precision, n: dict, device: torch.device) -> list[tuple[str, float]]:
    """Weights, gradients and optimizer state (each rank's share under --fsdp), for any training config;
    with --offload-optimizer on a GPU the optimizer state is in host memory (0 on the device)."""
    from common.optim import state_bytes_per_parameter
    shard = dist.world() if config.fsdp else 1
    host = config.offload_optimizer and device.type == "cuda"
    return [(f"weights ({precision.weights})", weight_bytes(n, precision, config.use_peft) / shard),
            ("gradients", n["trainable"] * precision.weights.itemsize / shard),
            (f"optimizer state ({config.optim}{', in host memory' if host else ''})",
             0.0 if host else n["trainable"] * state_bytes_per_parameter(config.optim, precision.weights) / shard)]


def grpo_components(config, device: torch.device, model=None) -> tuple[list[tuple[str, float]], dict]:
    """([(component, bytes)], {phase: bytes}) for a `run.py grpo` config on `device`; `model` on the
    meta device (built from config.model when not given)."""
    from lm.decode import LeanDecoder
    from lm.precision import resolve_precision
    precision = resolve_precision(config.dtype, device, training=True)
    wb, cb = precision.weights.itemsize, precision.compute.itemsize
    model = model if model is not None else meta_model(config.model, config.trust_remote_code)
    mc = model.config
    n = model_counts(model, config.lora_r if config.use_peft else 0, config.lora_target_modules)
    rows = config.prompts_per_step * config.group_size // dist.world()
    micro = min(config.micro_batch_size, rows)
    T, P = config.max_completion_length, PROMPT_TOKENS
    head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    parts = state_parts(config, precision, n, device) + [
        (f"sampler's weight copies ({precision.compute})", sampler_copies(n, precision, device, config.use_peft)
         if LeanDecoder.supports(model) else 0.0),
        ("reference model (beta > 0)", n["total"] * cb if config.beta > 0 and not config.use_peft else 0.0),
        (f"KV cache, sampling {rows} rows x {P + T} positions",
         2 * mc.num_hidden_layers * mc.num_key_value_heads * head_dim * (P + T) * rows * cb),
        (f"activations, one micro-batch of {micro}",
         micro_batch_activations(config, mc, n, micro * T, P + T, cb, device)),
        (f"log-prob chunk ({config.logprob_chunk_size} positions x vocabulary)",
         min(config.logprob_chunk_size, micro * T) * mc.vocab_size * (cb + 8)),
        ("process (interpreter, libraries)", PROCESS_CPU if device.type == "cpu" else 0.0),
        ("a layer merged as a checkpoint is written (LoRA)",
         n["layers"] / mc.num_hidden_layers * wb if config.use_peft else 0.0),
    ]
    weights, grads, state, copies, ref, kv, act, chunk, process, merged = (size for _, size in parts)
    parked = config.beta > 0 and config.offload_reference and device.type == "cuda"
    held = weights + state + copies + process + (0.0 if parked else ref)
    kept_kv = kv if device.type == "cuda" else 0.0  # a GPU keeps the sampler's rollout: its graphs read it by address
    # loading: on a CPU the weights and the file they are read from; a GPU gets the loaded weights once
    phases = {"loading": process + (2 if device.type == "cpu" else 1) * weights,
              "sampling": held + kv,
              "training": held + grads + act + chunk + kept_kv,
              "saving": held + merged}
    if parked:  # --offload-reference: on the GPU only for its forward passes, before the policy's
        phases["reference"] = held + ref + chunk + kept_kv
    return parts, phases


def weight_bytes(n: dict, precision, lora: bool) -> float:
    """The model's weights; with LoRA under mixed precision the frozen base is held in the compute
    dtype (lm.lora.attach), the adapters in the weights' dtype."""
    wb, cb = precision.weights.itemsize, precision.compute.itemsize
    return (n["total"] - n["trainable"]) * cb + n["trainable"] * wb if lora else n["total"] * wb


def sampler_copies(n: dict, precision, device: torch.device, lora: bool) -> float:
    """Bytes of the lean decoder's copies (lm/decode.py): every layer's matrices and the output layer in
    the compute dtype, except single matrices already in it (o, down without adapters, the output
    layer), which it reads in place; on a CPU float32 ones are copies (prepacked for oneDNN). Above
    IN_PLACE_ABOVE bytes of layers in the compute dtype nothing is copied but LoRA's adapters."""
    from lm.decode import IN_PLACE_ABOVE, prepacked
    cb = precision.compute.itemsize
    base = precision.compute if lora and precision.mixed else precision.weights   # lm.lora.attach
    copied = prepacked(device.type, precision.compute)
    if base == precision.compute and not copied and n["layers"] * cb > IN_PLACE_ABOVE:
        return n["trainable"] * cb if lora else 0.0
    copies = (n["layers"] + n["head"]) * cb
    if precision.weights == precision.compute and not copied:
        copies -= (n["head"] + (0 if lora else n["single"])) * cb
    return copies


def memory_budget(device: torch.device) -> float:
    """The bytes this device has: the GPU's memory, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def packed_components(config, device: torch.device, model=None, teacher=None) -> tuple[list, dict]:
    """The plan of `run.py sft` / `run.py distill` (packed rows): the model (the student), gradients,
    optimizer, the activations of one micro-batch (batch-size rows of max-length tokens), the output
    layer's chunk, and for distillation the frozen teacher in the compute dtype with its logits."""
    from lm.precision import resolve_precision
    precision = resolve_precision(config.dtype, device, training=True)
    cb = precision.compute.itemsize
    mc = model.config
    n = model_counts(model, config.lora_r if config.use_peft else 0, config.lora_target_modules)
    tokens = config.batch_size * config.max_length
    parts = state_parts(config, precision, n, device) + [
        (f"activations, one micro-batch of {tokens} tokens",
         micro_batch_activations(config, mc, n, tokens, config.max_length, cb, device)),
        ("output-layer chunk (1024 positions x vocabulary)", min(1024, tokens) * mc.vocab_size * (cb + 8)),
        ("teacher (frozen) and its logits", teacher_bytes(teacher, tokens, cb) if teacher is not None else 0.0),
        ("process (interpreter, libraries)", PROCESS_CPU if device.type == "cpu" else 0.0)]
    weights, grads, state, act, chunk, teacher_part, process = (size for _, size in parts)
    return parts, {"loading": process + (2 if device.type == "cpu" else 1) * weights + teacher_part,
                   "training": weights + grads + state + act + chunk + teacher_part + process}


def teacher_bytes(teacher, tokens: int, cb: int) -> float:
    return sum(p.numel() for p in teacher.parameters()) * cb + min(1024, tokens) * teacher.config.vocab_size * 4


def plan_parts(config, device: torch.device, models: tuple) -> tuple[list, dict]:
    return (grpo_components(config, device, models[0]) if hasattr(config, "group_size")
            else packed_components(config, device, *models))


def plan_models(config) -> tuple:
    """(the trained model, the teacher or None) on the meta device, for any training command's config."""
    if not hasattr(config, "teacher"):
        return meta_model(config.model, getattr(config, "trust_remote_code", False)), None
    teacher = meta_model(config.teacher)
    if config.student:
        return meta_model(config.student), teacher
    from distill.student import layer_choice
    spec = config.student_from_teacher_layers
    count = int(spec.split(":")[1]) if spec.startswith("greedy:") else len(
        layer_choice(spec, teacher.config.num_hidden_layers))
    import copy
    from transformers import AutoModelForCausalLM
    student_config = copy.deepcopy(teacher.config)
    student_config.num_hidden_layers = count
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(student_config), teacher


def print_plan(config, device: torch.device) -> float:
    """`--plan` (grpo, sft, distill): the table of components, the peaks by phase, what fits, and a last
    line `predicted peak: X GiB`."""
    import dataclasses
    models = plan_models(config)
    parts, phases = plan_parts(config, device, models)
    budget = memory_budget(device)
    print(f"memory plan for this run on {device.type} ({budget / GiB:.1f} GiB): nothing is loaded or trained")
    for name, size in parts:
        print(f"  {name:<58} {size / GiB:8.2f} GiB")
    print("  peaks by phase: " + ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in phases.items()))
    fits = lambda **kw: max(plan_parts(dataclasses.replace(config, **kw), device, models)[1].values()) <= budget
    if hasattr(config, "group_size"):
        G = config.group_size  # a micro-batch needs that many sampled rows: at least ceil(m / G) prompts a step
        micro = max((m for m in (1, 2, 4, 8, 16, 32, 64, 128)
                     if fits(micro_batch_size=m, prompts_per_step=max(config.prompts_per_step, -(-m // G)))), default=0)
        length = max((t for t in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
                      if fits(max_completion_length=t)), default=0)
        print(f"  largest micro-batch that fits: {micro or 'none'}; largest completion length at this "
              f"micro-batch: {length or 'none'}")
    else:
        rows = max((m for m in (1, 2, 4, 8, 16, 32) if fits(batch_size=m)), default=0)
        length = max((t for t in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768) if fits(max_length=t)), default=0)
        print(f"  largest micro-batch that fits: {rows or 'none'} rows; largest --max-length at this batch size: "
              f"{length or 'none'}")
    peak = max(phases.values()) / GiB
    print(f"predicted peak: {peak:.2f} GiB")
    return peak
