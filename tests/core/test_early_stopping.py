"""Early stopping on a validation metric: patience, min_delta, mode; the reason lands in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt.errors import ConfigError
from apt.testing import tiny_config
from apt.train import Trainer


def _fit(tmp_path: Path, **early: object) -> dict[str, object]:
    config = tiny_config(training={"val_interval": 1, "max_epochs": 3, "early_stopping": early})
    Trainer(config, run_dir=tmp_path / "run").fit()
    return json.loads((tmp_path / "run" / "summary.json").read_text())  # type: ignore[no-any-return]


def test_early_stopping_stops_when_the_metric_does_not_improve(tmp_path: Path) -> None:
    """A min_delta no loss drop can meet: the first validation sets the best, `patience` more stop the run."""
    summary = _fit(tmp_path, monitor="val_loss", patience=2, min_delta=100.0)
    assert summary["steps"] == 3
    assert "early stopping: val_loss did not improve" in str(summary["stop_reason"])
    assert "from early_stopping" in str(summary["stop_reason"])


def test_mode_decides_what_improving_means(tmp_path: Path) -> None:
    """The loss falls: in mode 'max' that is no improvement (stop at step 2); in 'min' the run goes on."""
    assert _fit(tmp_path / "max", monitor="val_loss", patience=1, mode="max")["steps"] == 2
    full = _fit(tmp_path / "min", monitor="val_loss", patience=1, mode="min")
    assert full["steps"] == 12 and full["stop_reason"] is None


def test_a_monitor_validation_does_not_measure_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training.early_stopping.monitor is 'val_acc'.*measured: .*val_bpb"):
        _fit(tmp_path, monitor="val_acc")
