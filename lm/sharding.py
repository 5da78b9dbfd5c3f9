"""`--fsdp`: a model's weights, gradients and AdamW state split over the ranks (FSDP2), for models whose
training state does not fit one GPU. Everything else about a loop stays as it is.

    shard(model, precision)    each decoder layer, then the whole model, becomes an FSDP2 unit
                               (`torch.distributed.fsdp.fully_shard`): a rank holds 1/world of every
                               weight; a unit's full weights are gathered for its forward and backward
                               and freed after; its gradients are reduce-scattered (summed, not averaged:
                               the loops' normalisers are global, as with dist.sum_gradients)
    entry(fn)                  a decorator for the functions that run a model piece by piece (its body,
                               then its output layer by hand, lm/logprobs.py): under FSDP they run as a
                               forward of the model, so the outer unit's weights (embeddings, final norm,
                               output layer) are gathered around them and their gradients reduced
    gathered(model)            a plain copy of a sharded model with its full weights (in the compute
                               dtype), for a phase that runs many small forwards: the rollout gathers
                               once for all its decoding steps rather than once per token. A model that is
                               not sharded comes back as it is.
    model_to_save, optimizer_state, load_optimizer_state: checkpoints gathered to rank 0, in the
                               format a run without FSDP writes (any run resumes any checkpoint)

Rule that keeps sharded runs from hanging: every forward and backward of a sharded model is a
collective, so every rank runs the same number of them in a step. The loops give every rank the same
number of micro-batches, a non-finite loss still goes backward (its NaN then reaches every rank's
gradient norm, and every rank skips the update), and GRPO trains completions whose advantage is 0
(adding exactly 0) instead of skipping them.
"""
import functools
import warnings

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from transformers import AutoModelForCausalLM

from common import dist
from common.config import ConfigError
from common.optim import offloaded

# The entry functions return views ((N*T,) log-probs viewed as (N, T)); FSDP warns that an in-place op on
# such a view would skip its backward hook. No caller changes log-probs, logits or losses in place.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

_running = set()  # ids of sharded models whose `entry` forward is running (nested entries run plainly)


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def shard(model, precision=None):
    """Shard `model` over the process group in place (and return it). `precision` (lm/precision.py):
    with float32 weights and a lower compute dtype, units gather in that dtype and reduce in float32."""
    if not dist.active():
        raise ConfigError("--fsdp shards a model over several processes: launch with torchrun")
    mixed = precision is not None and precision.compute != precision.weights
    policy = MixedPrecisionPolicy(param_dtype=precision.compute, reduce_dtype=torch.float32) if mixed \
        else MixedPrecisionPolicy()
    layers = getattr(model.base_model, "layers", None)
    if layers is None:
        raise ConfigError(f"--fsdp: {type(model).__name__} keeps no decoder layers in .layers (Llama, Qwen2 and "
                          f"most causal LMs of transformers do)")
    units = [*layers, model]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    for unit in units:  # gradients summed over ranks (plain SUM: gloo has no pre-scaled reduction)
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    model._entry_call = _entry_call.__get__(model)
    register_fsdp_forward_method(model, "_entry_call")
    return model


def _entry_call(model, fn, *args, **kwargs):
    _running.add(id(model))
    try:
        return fn(model, *args, **kwargs)
    finally:
        _running.discard(id(model))


def entry(fn):
    """Run `fn(model, ...)` as a forward of `model` when it is sharded (see the module docstring)."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        if not is_sharded(model) or id(model) in _running:
            return fn(model, *args, **kwargs)
        return model._entry_call(fn, *args, **kwargs)
    return wrapper


def full_weights(model, dtype=None, rank0_only=False) -> dict:
    """{name: full tensor} of a sharded model's parameters and buffers (a collective), in `dtype`."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=rank0_only))
    if rank0_only and not dist.is_main():
        return {}
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}


def plain_copy(model, state: dict, device):
    """A model of the same config that is not sharded, holding `state` (names as in model.state_dict())."""
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(model.config)
    copy.load_state_dict(state, assign=True, strict=False)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary frequencies) are not in state
        holder, _, leaf = name.rpartition(".")
        copy.get_submodule(holder).register_buffer(leaf, buffer.to(device), persistent=False)
    copy.tie_weights()
    copy.generation_config = model.generation_config
    return copy.to(device).eval()


def gathered(model):
    """The model to sample from: a plain copy with full weights when sharded (on every rank: a
    collective), in the autocast dtype when autocast is on; else the model itself."""
    if not is_sharded(model):
        return model
    device = next(model.parameters()).device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    return plain_copy(model, full_weights(model, dtype), device)


def model_to_save(model):
    """The model whose `save_pretrained` writes the checkpoint: gathered to rank 0 when sharded (a
    collective; None on the other ranks), else the model itself."""
    if not is_sharded(model):
        return model
    state = full_weights(model, rank0_only=True)
    return plain_copy(model, state, "cpu") if dist.is_main() else None


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state keyed by parameter name (one format with FSDP or without, so a checkpoint
    resumes either way); for a sharded model gathered whole to rank 0 (a collective). torchao's
    CPUOffloadOptimizer (one optimizer per host copy of a weight) keeps its own format."""
    if offloaded(optimizer):
        return {"offloaded": optimizer.state_dict()}
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(model)))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load `optimizer_state`'s dict (every rank reads the whole of it and keeps its shard)."""
    if ("offloaded" in state) != offloaded(optimizer):
        where = lambda offloaded: "in host memory (--offload-optimizer on a GPU)" if offloaded else "on the device"
        raise ConfigError(f"--resume: the checkpoint's optimizer state was kept {where('offloaded' in state)}, this "
                          f"run's is {where('offloaded' not in state)}: resume it on the same kind of device")
    if "offloaded" in state:
        optimizer.load_state_dict(state["offloaded"])
    elif all(isinstance(k, int) for k in state["state"]):  # keyed by position: written before names were used
        optimizer.load_state_dict(state)
    else:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
