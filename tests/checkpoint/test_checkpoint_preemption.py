"""Preemption: SIGTERM / SIGUSR1 during training leave a `latest` checkpoint that resumes bitwise."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from apt.cli import main
from apt.plugins import Plugin
from apt.testing import TINY_CONFIG
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points
from pydantic import BaseModel
from safetensors.torch import load_file


class _KillConfig(BaseModel):
    at: int = -1
    signum: int = int(signal.SIGTERM)


class Killer(Plugin):
    """Sends a real signal to this process in the middle of step ``at`` (after its backward)."""

    name = "killer"
    version = "1.0.0"
    config_model = _KillConfig

    def on_backward_end(self, step: int) -> None:
        if step == self.config.at:
            os.kill(os.getpid(), self.config.signum)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    return path


def _train(tiny_yaml: Path, run_dir: Path, *extra: str) -> int:
    args = ["train", "--config", str(tiny_yaml), "--run-dir", str(run_dir), "--plugins", "checkpoint,killer",
            "--set", "checkpoint.every_n_steps=null", "--set", "checkpoint.every_n_epochs=null", *extra]  # fmt: skip
    with fake_entry_points(FakeEntryPoint("killer", Killer), keep_installed=True):
        return main(args)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_during_training_leaves_a_checkpoint_that_resumes_bitwise(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: signal.Signals
) -> None:
    """The step in flight completes, a checkpoint marked `latest` is written, the exit status is 128+signum,
    and `--resume latest` ends with the weights of an uninterrupted run."""
    assert _train(tiny_yaml, tmp_path / "ref") == 0
    reference = load_file(tmp_path / "ref" / "model.safetensors")

    run_dir = tmp_path / "run"
    code = _train(tiny_yaml, run_dir, "--set", "killer.at=4", "--set", f"killer.signum={int(signum)}")
    err = capsys.readouterr().err
    assert code == 128 + signum
    assert f"stopped by {signum.name} at step 5" in err and f"--run-dir {run_dir} --resume latest" in err
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == "step00000005-preempted"
    assert not (run_dir / "summary.json").exists()

    assert _train(tiny_yaml, run_dir, "--resume", "latest") == 0
    resumed = load_file(run_dir / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all((reference[k] == resumed[k]).all() for k in reference)


def test_signal_handlers_are_restored_after_the_run(tiny_yaml: Path, tmp_path: Path) -> None:
    """Outside `fit` the process's own SIGTERM handler is in force again."""
    before = signal.getsignal(signal.SIGTERM)
    assert _train(tiny_yaml, tmp_path / "run") == 0
    assert signal.getsignal(signal.SIGTERM) is before
