"""Checkpoints: a folder `AutoModelForCausalLM.from_pretrained` loads, plus the training state.

    output_dir/checkpoint-<step>/
        config.json, model.safetensors, tokenizer files      <- transformers loads this folder
        training_state.pt   optimizer, scheduler, RNG states, step, data position, ...

A checkpoint is written into `checkpoint-<step>.tmp` and renamed when complete, so a crash while
saving leaves the previous checkpoints intact and never a half-written folder under the final name.
Old checkpoints are renamed to `.trash` before they are deleted (a kill mid-delete leaves no
half-deleted folder that looks complete); leftovers of an interrupted save are removed by the next.

A run folder belongs to one run: `start_run` refuses a folder that holds another run's checkpoints
or logs unless the caller resumes it or asks to overwrite it.
"""
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from common import dist
from lm import lora, sharding

STATE_FILE = "training_state.pt"
PLOTS = ("training_curves.png",)


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
                    keep: int | None = None, adapters_of=None) -> Path:
    """Write checkpoint-<step> atomically; `state` is pickled next to the weights.

    `keep`: how many of the newest checkpoints to keep (None keeps all). `adapters_of`: a model with
    LoRA adapters (lm/lora.py), whose adapter goes into the checkpoint's adapter/ folder; with `model`
    None the weights written are its merged ones (`lora.save_merged`).
    """
    tidy(output_dir)
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if model is None:  # a model with adapters: merged into it as it is written (lm/lora.py)
        lora.save_merged(adapters_of, tmp)
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if adapters_of is not None:
        lora.save_adapters(adapters_of, tmp / lora.ADAPTER_DIR)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    readable_files(tmp)
    if final.exists():  # saving the same step again: replace only once the new copy is complete
        old = final.with_name(final.name + ".old")  # listed as the checkpoint while final is missing
        _remove(old)
        final.rename(old)
        tmp.rename(final)
        _remove(old)
    else:
        tmp.rename(final)
    if keep is not None:
        for path in list_checkpoints(output_dir)[:-keep]:
            _remove(path)
    return final


def readable_files(folder: Path) -> None:
    """Every file under `folder` with the mode a plain open() gives (0644 under the usual umask 022):
    safetensors' writer makes model.safetensors 0600 on some systems, unreadable to a colleague."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def tidy(output_dir: str | Path) -> None:
    """Clear what an interrupted save or delete left: `.tmp` and `.trash` folders go; an `.old` folder
    goes back to its name if the new copy never got there, else it goes."""
    for path in Path(output_dir).glob("checkpoint-*.*"):
        if path.suffix in (".tmp", ".trash"):
            shutil.rmtree(path)
        elif path.suffix == ".old":
            final = path.with_suffix("")
            _remove(path) if final.exists() else path.rename(final)


def _remove(path: Path) -> None:
    """Delete a folder so that a kill at any moment leaves it whole or gone: rename, then delete."""
    if path.exists():
        trash = path.with_name(path.name + ".trash")
        shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)
        shutil.rmtree(trash)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. `checkpoint-N.old` counts while `checkpoint-N` is missing
    (a kill between the two renames of a re-save)."""
    found = {}
    for path in sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: p.name.endswith(".old")):
        match = re.fullmatch(r"checkpoint-(\d+)(\.old)?", path.name)
        if match and (path / STATE_FILE).exists():
            found.setdefault(int(match.group(1)), path)
    return [found[step] for step in sorted(found)]


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


def start_run(output_dir: str | Path, resume: str, overwrite: bool,
              logs: tuple[str, ...] = ("metrics.jsonl",)) -> tuple[Path | None, Path]:
    """(checkpoint to resume from or None, the run folder). A fresh run refuses a folder that holds
    another run's checkpoints or logs (two runs would mix: the newest checkpoint could be the other
    run's); with `overwrite` it removes them first."""
    resume_from = find_resume(resume)
    if resume_from is not None:
        return resume_from, resume_from.parent
    out = Path(output_dir)
    earlier = sorted(out.glob("checkpoint-*")) + [out / name for name in logs
                                                   if (out / name).exists() and (out / name).stat().st_size]
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise FileExistsError(f"{out} already holds another run ({names}): continue it with --resume {out}, "
                              f"or start afresh with --overwrite (removes its checkpoints and logs)")
    if dist.is_main():  # every rank checks (the same files: nobody writes yet), one removes
        for path in earlier:
            _remove(path) if path.is_dir() else path.unlink()
        for name in PLOTS:
            (out / name).unlink(missing_ok=True)
    dist.barrier()
    return None, out


def save_training(output_dir: str | Path, step: int, model, tokenizer, optimizer, scheduler, state: dict,
                  keep: int | None = None) -> None:
    """A training loop's checkpoint: the weights, the optimizer and schedule, and `state` (the data
    position, ...). Every rank calls it: a sharded model and its optimizer state are gathered to rank 0
    (lm/sharding.py), rank 0 writes, and every rank returns once it is on disk. A model with LoRA
    adapters is saved merged, its adapter beside (lm/lora.py)."""
    adapted = lora.wrapper(model) is not None
    weights = None if adapted else sharding.model_to_save(model)  # LoRA: written merged, a layer at a time
    state = {**state, "optimizer": sharding.optimizer_state(model, optimizer), "scheduler": scheduler.state_dict()}
    if dist.is_main():
        save_checkpoint(output_dir, step, weights, tokenizer, state, keep=keep, adapters_of=model if adapted else None)
    dist.barrier()


def restore_training(checkpoint_dir: str | Path, model, optimizer, scheduler) -> dict:
    """Load the optimizer, scheduler and RNG states of a checkpoint; returns its training state."""
    state = load_training_state(checkpoint_dir, restore_rng=False)
    sharding.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # last: loading the optimizer state runs one zero-gradient step to create the state (torch's
    # distributed checkpoint), and with stochastic rounding that step draws random numbers
    set_rng_state(state["rng"])
    return state
