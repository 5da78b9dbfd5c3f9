"""Checkpoints: a folder `AutoModelForCausalLM.from_pretrained` loads, plus the training state.

    output_dir/checkpoint-<step>/
        config.json, model.safetensors, tokenizer files      <- transformers loads this folder
        training_state.pt   optimizer, scheduler, RNG states, step, data position, ...

A checkpoint is written into `checkpoint-<step>.tmp` and renamed when complete, so a crash while
saving leaves the previous checkpoints intact and never a half-written folder under the final name.
"""
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "training_state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict,
                    keep: int | None = None) -> Path:
    """Write checkpoint-<step> atomically; `state` is pickled next to the weights.

    `keep`: how many of the newest checkpoints to keep (None keeps all).
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():  # saving the same step again: replace only once the new copy is complete
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    if keep is not None:
        for path in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(path)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / STATE_FILE).exists():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_training_state(checkpoint_dir: str | Path, restore_rng: bool = True) -> dict:
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, weights_only=False)
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def find_resume(resume: str) -> Path | None:
    """`--resume`: a checkpoint folder, or the newest complete checkpoint in a run folder."""
    if not resume:
        return None
    path = Path(resume)
    if (path / STATE_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"--resume {resume}: no complete checkpoint there")
    return latest


def restore_training(checkpoint_dir: str | Path, optimizer, scheduler) -> dict:
    """Load the optimizer, scheduler and RNG states of a checkpoint; returns its training state."""
    state = load_training_state(checkpoint_dir)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state
