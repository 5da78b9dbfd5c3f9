"""Run outputs shared by every training command: config.json, metrics.jsonl, samples.jsonl, plots."""
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch


def phase_clock(device):
    """A clock for the phases of a step, in seconds: on a GPU it waits for the queued work first, so
    that a phase's time is its own work and not the launch of its kernels."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def clock() -> float:
        sync()
        return time.perf_counter()
    return clock


def write_config(output_dir: str | Path, config) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    (out / "config.json").write_text(json.dumps(values, indent=2, default=str) + "\n")


def open_run(output_dir: str | Path, config, resume_step: int | None,
             logs: tuple[str, ...] = ("metrics.jsonl",)) -> None:
    """Start a run's folder: a fresh run clears its logs; a resumed one drops the lines after
    `resume_step` (they are written again). Writes config.json."""
    out = Path(output_dir)
    for name in logs:
        if resume_step is None:
            (out / name).unlink(missing_ok=True)
        else:
            truncate_jsonl(out / name, resume_step)
    write_config(out, config)


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json_line(record))


def json_line(record: dict) -> str:
    """One line of strict JSON: a number that is not finite (a skipped step's loss, the entropy of a
    step that trained nothing) is written as null, which every JSON reader accepts (NaN is not JSON)."""
    return json.dumps(_finite_or_null(record), default=_plain, allow_nan=False) + "\n"


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-dim tensor or numpy number
        return _finite_or_null(value.item())
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; a last line cut short (a run killed while appending) is left out."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    try:
        records += [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        pass
    return records


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop records past `max_step` (a resumed run rewrites the steps after its checkpoint); the file
    is replaced in one rename, so a kill leaves the old or the new one, never half of it."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json_line(r) for r in kept))
        os.replace(tmp, path)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def summary(out: Path, metric: str, first_eval: dict, last: dict, checkpoint) -> str:
    """The lines a run ends with: where its last checkpoint is, `metric` (GRPO's reward, the SFT and
    distillation loss) over the first and last quarter of the steps, held-out accuracy if measured."""
    records = [r for r in read_jsonl(Path(out) / "metrics.jsonl") if _finite(r.get(metric))]
    lines = [f"last checkpoint: {checkpoint}"]
    if records:
        q = max(1, len(records) // 4)
        mean = lambda part: sum(r[metric] for r in part) / len(part)
        lines.append(f"{metric} {mean(records[:q]):.3f} in the first quarter of the steps -> {mean(records[-q:]):.3f} "
                     f"in the last ({len(records)} steps)")
    if first_eval and "eval/accuracy" in last:
        lines.append(f"held-out accuracy {first_eval['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f}, "
                     f"format {first_eval['eval/format_rate']:.3f} -> {last['eval/format_rate']:.3f}")
    return "\n".join(lines)


REDRAW_SECONDS = 30.0         # the training curves, redrawn at a checkpoint at most this often (and at the end)
_drawn: dict[str, float] = {}  # each PNG: when this process last drew it


def plot_metrics(metrics_path: str | Path, keys: list[str], out_path: str | Path, title: str = "",
                 at_most_every: float = 0.0) -> Path | None:
    """One PNG with a panel per metric against `step`: the raw values (a light line, points when there
    are few), a dark moving mean when there are many; integer step ticks; lines thick enough for a projector.
    `at_most_every` (seconds): no redraw sooner than that after this process last drew the file (a
    drawing costs ~0.4 s: the loops redraw at each checkpoint, at most every REDRAW_SECONDS, and always at
    the last); returns None when it skipped."""
    if time.monotonic() - _drawn.get(str(out_path), -math.inf) < at_most_every:
        return None
    _drawn[str(out_path)] = time.monotonic()
    records = read_jsonl(metrics_path)
    keys = [k for k in keys if any(_finite(r.get(k)) for r in records)]
    if not records or not keys:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
        steps, values = zip(*points)
        window = max(1, len(values) // 10)
        ax.plot(steps, values, color="tab:blue", alpha=0.45 if window > 1 else 1.0, linewidth=2,
                marker="o" if len(values) <= 30 else None, markersize=4)
        if window > 1:
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, color="tab:blue", linewidth=3)
        ax.set_title(key, fontsize=12)
        ax.set_xlabel("step", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no 2.5
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
