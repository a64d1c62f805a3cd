"""Checkpoint faults: sizes checked before reading, the structure of state.json, a `latest` that is not a file."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from apt.cli import main
from apt.testing import TINY_CONFIG
from apt_plugin_checkpoint import CheckpointStore
from apt_plugin_checkpoint._manifest import MANIFEST_FILE


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished tiny run with checkpoints at steps 4 and 8 (and its summary removed: it can be resumed)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--plugins", "checkpoint", "--run-dir", str(run),
            "--set", "checkpoint.every_n_steps=4", "--set", "checkpoint.async_save=false"]  # fmt: skip
    assert main(args) == 0
    (run / "summary.json").unlink()
    return run


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail instead of hanging forever (a FIFO read blocks)."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_huge_tensor_file_is_not_read_and_latest_falls_back(run_dir: Path, no_hang: None) -> None:
    """An 8 GiB (sparse) tensors file: refused from its size alone; the previous checkpoint loads."""
    store = CheckpointStore(run_dir / "checkpoints")
    latest = store.latest_name()
    assert latest == "step00000008"
    os.truncate(store.root / latest / "tensors.safetensors", 8 << 30)
    with pytest.warns(UserWarning, match="has 8589934592 bytes but the manifest says"):
        loaded = store.load_latest()
    assert loaded.manifest.step == 4


def _rehash(folder: Path, name: str) -> None:
    """Update the manifest after `name` was edited, so that the hashes are valid."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["counters", "model", "step_in_epoch"])
def test_a_state_json_of_the_wrong_structure_is_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    folder = run_dir / "checkpoints" / "step00000008"
    state = json.loads((folder / "state.json").read_text())
    trainer = state["tree"]["trainer"]
    if damage == "step_in_epoch":
        trainer["counters"]["step_in_epoch"] = "four"
    else:
        del trainer[damage]
    (folder / "state.json").write_text(json.dumps(state))
    _rehash(folder, "state.json")
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run_dir), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder / "state.json") in err and damage in err
    assert "Traceback" not in err


def test_a_latest_that_is_a_fifo_does_not_hang(run_dir: Path, no_hang: None) -> None:
    store = CheckpointStore(run_dir / "checkpoints")
    (store.root / "latest").unlink()
    os.mkfifo(store.root / "latest")
    assert store.latest_name() is None
    assert store.load_latest().manifest.step == 8  # the newest checkpoint, found without the pointer


def test_a_huge_latest_is_not_read(run_dir: Path) -> None:
    store = CheckpointStore(run_dir / "checkpoints")
    os.truncate(store.root / "latest", 1 << 30)
    assert store.latest_name() is None
