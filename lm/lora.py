"""`--use-peft`: train LoRA adapters (the `peft` library) instead of every weight.

    add_adapters(model, r, alpha, dropout, targets)   LoRA layers put into `model` in place (peft's
                                                      `get_peft_model`); only they train
    load_adapters(model, folder)                      the same, from a checkpoint's adapter (resume)
    adapters_off(model)                               a context in which the model is its base model:
                                                      GRPO's reference (beta > 0) with no second copy
    save_merged(model, folder)                        the merged model written a layer at a time (checkpoints)
    merged(model)                                     a plain model of the same config with the adapters
                                                      merged into its weights (the weights a checkpoint holds)
    save_adapters(model, folder)                      adapter_model.safetensors and adapter_config.json

The loops keep calling the transformers model itself (its body, its output layer); peft's wrapper is
kept beside it (`wrapper(model)`) for saving. The sampler's lean decoder reads each adapted layer's
weight as W + B A * scaling (lm/decode.py `weight_of`), refreshed after every optimizer step.
A checkpoint folder stays what `from_pretrained` loads (merged weights); the adapter goes in its
`adapter/` subfolder, for peft users (`PeftModel.from_pretrained(base, "checkpoint-N/adapter")`):
an adapter_config.json at the top would make transformers load the base model named in it instead.
"""
import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import ConfigError, arg

ADAPTER_DIR = "adapter"


@dataclass
class LoraFlags:
    """The LoRA flags of grpo, sft and distill (TRL's names)."""
    use_peft: bool = arg(False, "train LoRA adapters (peft) instead of every weight; checkpoints hold the merged "
                         "model and the adapter (adapter/)")
    lora_r: int = arg(16, "with --use-peft: the adapters' rank")
    lora_alpha: int = arg(32, "with --use-peft: the adapters' scale is alpha / r")
    lora_dropout: float = arg(0.05, "with --use-peft: dropout on the adapters' input")
    lora_target_modules: str = arg("all-linear", "with --use-peft: all-linear, or layer names such as q_proj,v_proj")


def attach(model, flags: LoraFlags, resume_from=None, precision=None):
    """The run's adapters put into `model`: new ones, or a resumed checkpoint's. Says how many train.
    Under mixed `precision` (lm/precision.py) every frozen weight is held in the compute dtype, since a
    weight that never changes needs no float32 master (half the base model's memory); the adapters
    stay in the weights' dtype."""
    if resume_from is not None:
        load_adapters(model, Path(resume_from) / ADAPTER_DIR)
    else:
        add_adapters(model, flags.lora_r, flags.lora_alpha, flags.lora_dropout, flags.lora_target_modules)
    if precision is not None and precision.mixed:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(precision.compute)
    trainable, total = trainable_parameters(model)
    print(f"LoRA: {trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters train ({100 * trainable / total:.2f}%)")
    return model


def _peft():
    from common.optim import import_torchao_quietly
    import_torchao_quietly()  # peft imports torchao where it is installed, which logs lines of its own
    try:
        import peft
    except ImportError:
        raise ConfigError("--use-peft needs the package peft: pip install peft") from None
    # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    return peft


def wrapper(model):
    """peft's wrapper of a model with adapters, or None."""
    return model.__dict__.get("_peft_wrapper")


def _keep(model, wrapped):
    object.__setattr__(model, "_peft_wrapper", wrapped)  # not a submodule: the loops never see it
    return model


def add_adapters(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, targets: str = "all-linear"):
    """LoRA on `targets` ("all-linear": every linear layer but the output layer; or names such as
    q_proj,v_proj); every other weight frozen. Returns the model (changed in place)."""
    peft = _peft()
    modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                             task_type="CAUSAL_LM")
    return _keep(model, peft.get_peft_model(model, config))


def load_adapters(model, folder):
    """Trainable adapters from `folder` (a checkpoint's adapter/) put into `model`."""
    peft = _peft()
    return _keep(model, peft.PeftModel.from_pretrained(model, str(folder), is_trainable=True))


@contextlib.contextmanager
def adapters_off(model):
    with wrapper(model).disable_adapter():
        yield model


def has_dropout(model) -> bool:
    """Whether a forward pass of `model` in its current mode drops anything (LoRA's dropout)."""
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in model.modules())


@contextlib.contextmanager
def dropout_off(model):
    """`model` without dropout inside the block (eval mode), its mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def merged(model):
    """A plain transformers model, on the CPU, whose weights are `model`'s with the adapters merged in
    (the model itself is left as it is: merging and unmerging in place would move its base weights by
    float rounding, and a resumed run must continue from exactly the same weights). A whole second
    copy: checkpoints use `save_merged`, which writes the same tensors a layer at a time."""
    from lm.sharding import plain_copy
    return plain_copy(model, {name: make().cpu() for name, make in merged_tensors(model).items()}, "cpu")


def merged_tensors(model) -> dict:
    """{name in the plain model's state dict: a function giving that tensor, merged where adapted}, in
    the adapters' dtype (the run's weights); a tied output layer is its embedding and is listed once."""
    dtype = next(p.dtype for p in model.parameters() if p.requires_grad)
    tensors, seen = {}, set()  # saved name -> a function giving the tensor; storages already listed
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            tensors[f"{name}.weight"] = lambda m=module: merged_weight(m, dtype)
            if module.base_layer.bias is not None:
                tensors[f"{name}.bias"] = lambda m=module: m.base_layer.bias.detach().to(dtype)
    for name, tensor in model.state_dict().items():
        if "lora_" not in name and ".base_layer." not in name and name not in tensors:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensors[name] = lambda t=tensor: t.detach().to(dtype)
    return tensors


def merged_weight(layer, dtype: torch.dtype) -> torch.Tensor:
    """W + each active adapter's B A * scaling, added in `dtype` (a frozen base held in bfloat16 under
    mixed precision, merged into the float32 checkpoint without rounding the adapters' part)."""
    weight = layer.base_layer.weight.detach().to(dtype)
    if not layer.merged and not layer.disable_adapters:
        for name in layer.active_adapters:
            if name in layer.lora_A:
                weight = weight + layer.get_delta_weight(name).detach().to(dtype)
    return weight


def save_merged(model, folder) -> None:
    """Write `model` with its adapters merged in (W + BA) as a transformers checkpoint, a shard per
    decoder layer and one for the rest, with the index `from_pretrained` reads: at most one layer's
    merged weights exist at a time, where `merged(model)` holds a whole second copy of the model (5.8
    GiB for a 3B model in bfloat16). The same tensors as `merged(model)` (`merged_tensors`)."""
    import copy
    import json
    import re
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = merged_tensors(model)
    layer_of = lambda name: int(m.group(1)) if (m := re.search(r"\.layers\.(\d+)\.", name)) else -1
    groups = sorted({layer_of(n) for n in tensors})
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        shard = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        part = {n: make().cpu().contiguous() for n, make in tensors.items() if layer_of(n) == group}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        total += sum(t.numel() * t.element_size() for t in part.values())
        del part
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)


def save_adapters(model, folder) -> None:
    """The adapter (peft's folder). Its base is named as it was loaded (`smollm2-135m` for the built-in
    model). The vocabulary is never resized here, so no embedding copy, and no hub lookup to decide."""
    wrapper(model).save_pretrained(str(folder), save_embedding_layers=False)
