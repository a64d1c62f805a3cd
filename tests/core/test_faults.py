"""Faults end in one line naming the culprit (exit 2) and lose nothing: non-finite config values, NaN in the
summary, a refused start, a full disk, a slow hook."""

from __future__ import annotations

import errno
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from apt.cli import main
from apt.plugins import Plugin
from apt.testing import TINY_CONFIG
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points
from apt.testing import run_tiny_training
from apt.train._metrics import write_json


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


def _strict_json(path: Path) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("key", ["training.lr=.inf", "training.weight_decay=.nan", "training.grad_clip=-.inf",
                                 "data.val_fraction=.nan", "model.dropout=.nan"])  # fmt: skip
def test_non_finite_numbers_are_refused_at_validation(
    key: str, tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir), "--set", key]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{key.split('=')[0]}'" in err and "finite" in err
    assert not run_dir.exists()


def test_summary_json_is_valid_json_when_numbers_are_not_finite(tmp_path: Path) -> None:
    class NaNLoss(Plugin):
        name = "nan_loss"

        def on_compute_loss(self) -> dict[str, torch.Tensor]:
            return {"nan": torch.tensor(float("nan"))}

    run = run_tiny_training(NaNLoss, run_dir=tmp_path / "run")
    assert math.isnan(run.summary["train_loss"])
    summary = _strict_json(tmp_path / "run" / "summary.json")
    assert summary["train_loss"] is None and summary["steps"] == 8
    write_json(tmp_path / "x.json", {"a": float("inf"), "b": [float("-inf")], "c": {"d": float("nan")}})
    assert _strict_json(tmp_path / "x.json") == {"a": "inf", "b": ["-inf"], "c": {"d": None}}


def test_the_disk_check_runs_before_anything_is_written(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start refused for space leaves the folder as found, and the next start in it is not refused."""
    import apt.train._disk

    run_dir = tmp_path / "run"
    monkeypatch.setattr(apt.train._disk, "disk_free_bytes", lambda path: 1000)
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir)]) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert not run_dir.exists()
    monkeypatch.undo()
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir)]) == 0


def test_a_plugin_refusing_the_start_leaves_an_existing_folder_as_found(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint plugin's own disk check (on_train_begin) refuses: no config.yaml, metrics or checkpoints."""
    import apt_plugin_checkpoint._plugin

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    monkeypatch.setattr(apt_plugin_checkpoint._plugin, "disk_free_bytes", lambda path: 1000)
    args = ["train", "--config", str(tiny_yaml), "--plugins", "checkpoint", "--run-dir", str(run_dir)]
    assert main(args) == 2
    assert "not enough disk space for one checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("target", "culprit"),
    [
        ("apt.train._trainer.save_weights", "model.safetensors"),
        ("apt.train._trainer.write_json", "summary.json"),
        ("apt.train._metrics.MetricsWriter.write", "metrics.jsonl"),
    ],  # fmt: skip
)
def test_a_full_disk_at_any_write_names_the_file(
    target: str, culprit: str, tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(target, full)
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--no-plugins", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run_dir / culprit) in err and "the disk is full" in err
    assert (run_dir / "config.yaml").is_file()  # what was written before stays


class Sleepy(Plugin):
    name = "sleepy"

    def on_step_end(self) -> None:
        time.sleep(0.08)  # over MIN_SECONDS_PER_STEP


def test_a_slow_hook_is_named_once_and_listed_in_the_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="apt.train"):
        run = run_tiny_training(Sleepy, run_dir=tmp_path / "run", overrides=["training.slow_hook_share=0.3"])
    warnings = [r.getMessage() for r in caplog.records if "of the training time" in r.getMessage()]
    assert len(warnings) == 1 and "sleepy" in warnings[0] and "on_step_end" in warnings[0]
    slow = json.loads((tmp_path / "run" / "summary.json").read_text())["slow_hooks"]
    assert [s["plugin"] for s in slow] == ["sleepy"] and slow[0]["share"] > 0.3
    assert run.summary["slow_hooks"] == slow


def test_the_end_of_run_line_lists_slow_hooks(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_entry_points(FakeEntryPoint("sleepy", Sleepy)):
        args = ["train", "--config", str(tiny_yaml), "--plugins", "sleepy", "--run-dir", str(tmp_path / "run")]
        assert main(args) == 0
    assert "slow hook: Sleepy.on_step_end (on_step_end) of plugin 'sleepy' took" in capsys.readouterr().out
