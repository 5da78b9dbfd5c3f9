"""`--report-to`: the training loops' metrics in experiment trackers, besides metrics.jsonl.

    --report-to none                  (default) metrics.jsonl, samples.jsonl and the plots only
    --report-to tensorboard           event files in OUTPUT_DIR/tensorboard (`tensorboard --logdir ...`)
    --report-to wandb                 Weights & Biases; works offline with WANDB_MODE=offline
    --report-to trackio               Hugging Face's trackio (a local dashboard)
    --report-to tensorboard,wandb     several at once

Each gets the same scalars as metrics.jsonl (every number of a step's line), the run's config, and a
table of a few decoded samples per logged step where it has tables (wandb, trackio; TensorBoard gets
them as a text table). A tracker's package is imported only when it is asked for; a missing one is a
one-line error naming what to install. Only rank 0 reports (the loops call `start` there).
"""
import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path

from common.config import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def parse_report_to(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"--report-to {value!r}: unknown {', '.join(unknown)}; choose none or any of "
                         f"{', '.join(TRACKERS)} (comma-separated)")
    return names


def _import(name: str):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter
        return __import__(name)
    except ImportError:
        raise ConfigError(f"--report-to {name} needs the package {PACKAGES[name]}: pip install {PACKAGES[name]}") from None


def scalars(record: dict) -> dict:
    """The numbers of a metrics line (lists such as an interval and non-finite values left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v)}


class Trackers:
    """The trackers of one run; with none asked for, every call does nothing."""

    def __init__(self, names: list[str], out: Path, config, project: str):
        self.names, self.backends = names, {}
        settings = asdict(config) if is_dataclass(config) else dict(config)
        if "tensorboard" in names:
            self.backends["tensorboard"] = _import("tensorboard")(log_dir=str(Path(out) / "tensorboard"))
            self.backends["tensorboard"].add_text("config", "```\n" + json.dumps(settings, indent=2, default=str) + "\n```")
        if "wandb" in names:
            wandb = _import("wandb")
            self.backends["wandb"] = wandb.init(project=project, name=Path(out).name, dir=str(out), config=settings)
        if "trackio" in names:
            trackio = _import("trackio")
            trackio.init(project=project, name=Path(out).name, config=settings)
            self.backends["trackio"] = trackio

    def log(self, record: dict) -> None:
        step, numbers = int(record["step"]), scalars(record)
        for name, backend in self.backends.items():
            if name == "tensorboard":
                for key, value in numbers.items():
                    backend.add_scalar(key, value, step)
            else:
                backend.log(numbers, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        """A table of a few decoded samples (dicts with the same keys) for this step."""
        if not rows:
            return
        columns = list(rows[0])
        data = [[row.get(c) for c in columns] for row in rows]
        for name, backend in self.backends.items():
            if name == "tensorboard":
                head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
                body = "".join("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |\n"
                               for r in data)
                backend.add_text("samples", head + body, step)
            elif name == "wandb":
                import wandb
                backend.log({"samples": wandb.Table(columns=columns, data=data)}, step=step)
            elif hasattr(backend, "Table"):
                backend.log({"samples": backend.Table(columns=columns, data=data)}, step=step)

    def close(self) -> None:
        for name, backend in self.backends.items():
            backend.close() if name == "tensorboard" else backend.finish()
        self.backends = {}


def start(report_to: str, out: Path, config, project: str = "r1-recipe") -> Trackers:
    return Trackers(parse_report_to(report_to), out, config, project)
