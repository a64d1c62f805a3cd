"""The logger provider kind: jsonl always, csv on request, unknown names refused, a failing logger named."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from apt.errors import ConfigError
from apt.plugins import Plugin
from apt.testing import run_tiny_training
from apt.testing import tiny_config
from apt.train import CSVLogger
from apt.train import Trainer


def test_an_unknown_logger_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run.loggers names 'wandb'.*available loggers: csv, jsonl"):
        Trainer(tiny_config(run={"loggers": ["wandb"]}), run_dir=tmp_path / "run").fit()


def test_csv_keeps_the_rows_up_to_a_resumed_step(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    for step in (1, 2, 3):
        logger.log({"step": step, "epoch": 0, "loss": 1.0 / step})
    logger.log({"step": 3, "epoch": 0, "val_bpb": 2.5})  # a new column rewrites the header
    resumed = CSVLogger(tmp_path, start_step=2)
    resumed.log({"step": 3, "epoch": 0, "loss": 0.25})
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"], r["val_bpb"]) for r in rows] == [
        ("1", "1.0", ""),
        ("2", "0.5", ""),
        ("3", "0.25", ""),
    ]


class Broken:
    def log(self, record: Any) -> None:
        raise RuntimeError("server unreachable")

    def close(self) -> None:
        pass


class BrokenLoggerPlugin(Plugin):
    name = "broken_logger"

    def setup(self, registry: Any, hook_manager: Any) -> None:
        super().setup(registry, hook_manager)
        registry.register("logger", "broken", lambda run_dir, config, start_step: Broken())


def test_a_failing_logger_is_named_and_turned_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="apt.train"):
        run = run_tiny_training(BrokenLoggerPlugin, run_dir=tmp_path / "run")
    assert run.summary["steps"] == 8
    errors = [r.getMessage() for r in caplog.records if "logger 'broken' failed" in r.getMessage()]
    assert len(errors) == 1 and "server unreachable" in errors[0]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 8
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 8
