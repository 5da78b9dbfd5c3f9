"""What a run leaves for people to read and share: plots, file modes, adapters that name their base."""
import json
import os

import pytest

from lm.loading import tiny_model, tiny_tokenizer


def test_plots_have_integer_step_ticks_and_thick_lines(tmp_path, monkeypatch):
    import matplotlib.figure
    from common.runlog import plot_metrics
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "reward": 0.1 * s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)))
    saved = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k)))
    assert plot_metrics(metrics, ["reward", "loss"], tmp_path / "curves.png").stat().st_size > 1000
    axes = [ax for ax in saved[0].axes if ax.lines]
    assert len(axes) == 2
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
        assert ticks and all(t == int(t) for t in ticks), ticks        # 5 steps: no tick at 1.5
        assert min(line.get_linewidth() for line in ax.lines) >= 2
    # a redraw sooner than at_most_every seconds after this process's last drawing of the file is skipped
    drawn = (tmp_path / "curves.png").stat().st_mtime_ns
    assert plot_metrics(metrics, ["reward", "loss"], tmp_path / "curves.png", at_most_every=60) is None
    assert len(saved) == 1 and (tmp_path / "curves.png").stat().st_mtime_ns == drawn
    assert plot_metrics(metrics, ["reward", "loss"], tmp_path / "curves.png", at_most_every=0) is not None
    assert len(saved) == 2


def test_checkpoint_files_are_readable_like_the_rest(tmp_path):
    from lm.checkpoint import save_checkpoint
    umask = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path, 1, tiny_model(), tiny_tokenizer(), {})
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_an_adapter_of_the_built_in_model_names_the_model_not_a_path(tmp_path, monkeypatch, recwarn):
    import lm.loading
    from lm import lora
    base = tmp_path / "cache" / "smollm2-135m"          # stands in for the converted built-in model
    tiny_model(tiny_tokenizer()).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    monkeypatch.setattr(lm.loading, "builtin_model_dir", lambda: base)
    model, _ = lm.loading.load_model("smollm2-135m")
    lora.add_adapters(model, r=2, alpha=4, dropout=0.0)
    lora.save_adapters(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m"
    assert not [w for w in recwarn if "smollm2-135m" in str(w.message)]   # no hub lookup of the name
