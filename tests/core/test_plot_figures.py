"""Readable plots: a family per panel, heatmaps for indexed families, no counters, labelled axes, baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apt.cli import main
from apt.cli._figures import plan_group


def _records() -> list[dict[str, Any]]:
    records = []
    for step in range(10, 110, 10):
        r: dict[str, Any] = {"step": step, "epoch": 0, "loss": 3.0 - step / 100, "lr": 1e-3 * step, "grad_norm": 0.5}
        for layer in range(2):
            for e in range(17):
                r[f"moe/layer{layer}/load_e{e}"] = (e + 1 + step % 3) / 170
            r[f"moe/layer{layer}/aux_loss"] = 1.0 + layer + step / 1000
            r[f"moe/layer{layer}/z_loss"] = 5.0 + step / 100
        r["moe/aux_loss"] = 1.5 + step / 1000
        r["moe/aux_loss_weight"] = 0.01
        r["align/num_updates"] = float(step)
        r["align/w"] = step / 100
        if step % 50 == 0:
            r["val_loss"], r["val_bpb"], r["align/stable_val_bpb"] = 2.0, 2.9, 3.1
        records.append(r)
    return records


def test_per_expert_loads_are_heatmaps_one_per_layer_and_each_family_has_its_panel() -> None:
    records = _records()
    keys = [k for k in records[0] if k.startswith("moe/")]
    panels, constants = plan_group("moe", keys, records)
    heatmaps = [p for p in panels if p.heatmap]
    assert [p.title for p in heatmaps] == ["moe/layer0/load_e*", "moe/layer1/load_e*"]
    assert all(len(p.heatmap) == 17 and not p.lines for p in heatmaps)
    lines = {p.title: p for p in panels if p.lines}
    # aux_loss (~1-2) and z_loss (~5) never share an axis; each holds its family across layers
    assert set(lines) == {"moe/aux_loss", "moe/z_loss"}
    assert list(lines["moe/aux_loss"].lines) == ["all", "layer0", "layer1"]
    assert list(lines["moe/z_loss"].lines) == ["layer0", "layer1"]
    assert constants == {"moe/aux_loss_weight": 0.01}
    assert all(p.ylabel for p in panels) and lines["moe/aux_loss"].ylabel == "aux_loss"
    assert lines["moe/z_loss"].labels == ["layer0", "layer1"]  # one colour per layer in every panel


def test_counters_are_not_drawn_as_metrics() -> None:
    records = _records()
    panels, _ = plan_group("align", [k for k in records[0] if k.startswith("align/")], records)
    assert [p.title for p in panels] == ["align/w"]


def test_apt_plot_draws_the_unigram_baseline_on_bpb_and_labels_every_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.figure

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    (tmp_path / "summary.json").write_text(json.dumps({"baseline_bpb": 4.68}))
    drawn: list[tuple[str, str]] = []
    baselines: list[float] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig: Any, path: Any, **kwargs: Any) -> None:
        for ax in fig.axes:
            if ax.get_title() or ax.lines or ax.images:
                if ax.get_label() != "<colorbar>":
                    drawn.append((Path(path).name, ax.get_ylabel()))
            baselines.extend(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--")
        real_savefig(fig, path, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    assert main(["plot", str(tmp_path), "--no-plugins"]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["align.png", "loss.png", "moe.png", "training.png", "val_bpb.png"]
    assert baselines == [4.68]
    assert all(label for _, label in drawn), drawn
