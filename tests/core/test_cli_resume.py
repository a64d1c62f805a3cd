"""Resume that remembers: `apt train --resume` continues a run with the configuration it was started with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from apt.cli import main
from apt.testing import TINY_CONFIG
from safetensors.torch import load_file


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


_START = ["--plugins", "checkpoint", "--set", "training.steps_per_epoch=3", "--set", "training.max_epochs=3",
          "--set", "checkpoint.every_n_steps=2", "--set", "checkpoint.keep_last=null",
          "--set", "checkpoint.async_save=false"]  # fmt: skip


def _interrupt_at(run_dir: Path, checkpoint: str) -> None:
    """Make a finished run look like one killed after ``checkpoint`` was written."""
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
    (run_dir / "checkpoints" / "latest").write_text(checkpoint + "\n")
    for later in (run_dir / "checkpoints").glob("step*"):
        if later.name > checkpoint:
            shutil.rmtree(later)


def test_resume_of_a_run_started_with_set_continues_its_schedule(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --config, no --set on the resume: the run's own config.yaml (9 steps) is continued, bitwise."""
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--run-dir", str(run_dir), *_START]) == 0
    reference = load_file(run_dir / "model.safetensors")
    _interrupt_at(run_dir, "step00000004")
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 9
    resumed = load_file(run_dir / "model.safetensors")
    assert all((reference[k] == resumed[k]).all() for k in reference)
    assert "resume" not in yaml.safe_load((run_dir / "config.yaml").read_text())["training"]


def test_resume_refuses_a_change_of_what_the_run_computes(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --set of the model's width on resume names the key and the way out; --force-config lets it through."""
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--run-dir", str(run_dir), *_START]) == 0
    _interrupt_at(run_dir, "step00000004")
    before = sorted(p.name for p in run_dir.rglob("*"))
    capsys.readouterr()
    code = main(["train", "--run-dir", str(run_dir), "--resume", "latest", "--set", "model.d_model=64"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "model.d_model 32 -> 64" in err and "--force-config" in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    # a --config file applies on top of the run's config.yaml too, with the same check
    other = tmp_path / "other.yaml"
    other.write_text("training: {seed: 7}\n")
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest", "--config", str(other)]) == 2
    assert "training.seed 1234 -> 7" in capsys.readouterr().err
    # what does not change the computation may change: here the validation interval
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest", "--set", "training.val_interval=2"]) == 0


def test_a_finished_run_says_so_and_how_to_extend_it(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming a finished run trains nothing and says how to extend it; with max_epochs raised it goes on."""
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--run-dir", str(run_dir), *_START]) == 0
    summary = (run_dir / "summary.json").read_text()
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "is finished" in err and "--set training.max_epochs=4" in err
    assert (run_dir / "summary.json").read_text() == summary
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest", "--set", "training.max_epochs=4"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 12


def test_resume_latest_without_run_dir_continues_the_newest_run_in_place(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume latest` without --run-dir resumes the newest run under run.dir, in its own folder."""
    runs = tmp_path / "runs"
    for name in ("older", "newer"):
        args = ["train", "--config", str(tiny_yaml), "--run-dir", str(runs / name), *_START]
        assert main(args) == 0
    _interrupt_at(runs / "newer", "step00000004")
    capsys.readouterr()
    assert main(["train", "--resume", "latest", "--set", f"run.dir={runs}"]) == 0
    assert sorted(p.name for p in runs.iterdir()) == ["newer", "older"]
    assert json.loads((runs / "newer" / "summary.json").read_text())["steps"] == 9
