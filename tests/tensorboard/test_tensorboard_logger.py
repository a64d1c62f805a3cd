"""The tensorboard plugin's events, read back with TensorBoard's own reader, equal metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from apt.testing import tiny_config
from apt.train import Trainer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _jsonl(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back_equal_metrics_jsonl(tmp_path: Path) -> None:
    """Every number of every record, at its step, as float32 (what TensorBoard stores)."""
    run_dir = tmp_path / "run"
    Trainer(tiny_config(plugins=["tensorboard"]), run_dir=run_dir).fit()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in _jsonl(run_dir):
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                expected.setdefault(key, []).append((int(record["step"]), float(np.float32(value))))  # type: ignore[call-overload]
    events = _events(run_dir / "tensorboard")
    assert set(events) == set(expected) >= {"loss", "lr", "val_bpb", "train_loss", "epoch"}
    for key, points in expected.items():
        assert events[key] == points, key


def test_run_loggers_picks_loggers_explicitly(tmp_path: Path) -> None:
    """run.loggers=[csv]: metrics.csv (rows equal metrics.jsonl), and no TensorBoard events."""
    run_dir = tmp_path / "run"
    Trainer(tiny_config(plugins=["tensorboard"], run={"loggers": ["csv"]}), run_dir=run_dir).fit()
    assert not (run_dir / "tensorboard").exists()
    import csv

    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = _jsonl(run_dir)
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert {k: float(v) for k, v in row.items() if v != ""} == {k: float(v) for k, v in record.items()}  # type: ignore[arg-type]
