"""Exact resume with the real Trainer: mid-epoch, epoch end, `latest`, plugins, fingerprints."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from apt.errors import AptError
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.train import Trainer
from apt_plugin_checkpoint import CheckpointStore
from ckpt_helpers import one_thread
from ckpt_helpers import same_weights
from ckpt_helpers import step_losses
from ckpt_helpers import tiny_config


def _trainer(config: Any, run_dir: Path, *extra: type[Plugin]) -> Trainer:
    pm = PluginManager()
    for cls in extra:
        assert cls.name is not None
        pm.register_plugin(cls.name, cls)
    pm.load_from_config(config)
    return Trainer(config, pm, run_dir=run_dir)


class _StopAt(Plugin):
    """Test helper: asks the run to stop after a given global step (an interruption)."""

    name = "stop_at"
    version = "1.0.0"

    def on_step_end(self, trainer: Any) -> None:
        if trainer.global_step == self.config.get("step"):
            trainer.request_stop("test interruption", source=self.name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    """One uninterrupted run that saves every 2 steps and keeps everything."""
    run = tmp_path_factory.mktemp("reference")
    trainer = _trainer(tiny_config(["checkpoint"], checkpoint={"every_n_steps": 2, "keep_last": None}), run)
    with one_thread():
        trainer.fit()
    return trainer, run


@pytest.mark.parametrize("name", ["step00000004", "step00000006", "step00000008"])
def test_resume_from_a_checkpoint_repeats_the_run_bitwise(
    reference: tuple[Trainer, Path], tmp_path: Path, name: str
) -> None:
    # step 4: mid-epoch (step_in_epoch 4 of 6); step 6: saved at the end of epoch 0;
    # step 8: mid-epoch of epoch 1. The validation at step 3/9 and dropout draw RNG too.
    ref, ref_run = reference
    manifest = CheckpointStore(ref_run / "checkpoints").load(name).manifest
    assert manifest.step == int(name[4:])
    resumed = _trainer(tiny_config(["checkpoint"], resume=str(ref_run / "checkpoints" / name)), tmp_path)
    resumed.fit()
    assert resumed.global_step == ref.global_step == 12
    assert same_weights(ref.model, resumed.model)
    ref_losses, new_losses = step_losses(ref_run), step_losses(tmp_path)
    assert sorted(new_losses) == list(range(manifest.step + 1, 13))
    assert all(new_losses[s] == ref_losses[s] for s in new_losses)  # exactly equal floats


def test_interrupted_run_resumes_latest_in_the_same_folder(reference: tuple[Trainer, Path], tmp_path: Path) -> None:
    ref, ref_run = reference
    config = tiny_config(["checkpoint", "stop_at"], checkpoint={"every_n_steps": 4}, stop_at={"step": 5})
    first = _trainer(config, tmp_path, _StopAt)
    first.fit()
    assert first.global_step == 5 and first.stop_reason is not None
    assert CheckpointStore(tmp_path / "checkpoints").latest_name() == "step00000005"  # saved on stop
    second = _trainer(tiny_config(["checkpoint"], resume="latest", checkpoint={"every_n_steps": 4}), tmp_path)
    second.fit()
    assert same_weights(ref.model, second.model)
    ref_losses, losses = step_losses(ref_run), step_losses(tmp_path)
    assert losses == {s: ref_losses[s] for s in range(1, 13)}


def test_resume_falls_back_when_latest_is_corrupt(reference: tuple[Trainer, Path], tmp_path: Path) -> None:
    ref, ref_run = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run / "checkpoints", run / "checkpoints")
    latest = CheckpointStore(run / "checkpoints").latest_name()
    assert latest == "step00000012"
    (run / "checkpoints" / latest / "tensors.safetensors").write_bytes(b"\0" * 64)  # a torn write
    trainer = _trainer(tiny_config(["checkpoint"], resume="latest"), run)
    with pytest.warns(UserWarning, match="step00000012.*resuming instead from 'step00000010'"):
        trainer.fit()
    assert same_weights(ref.model, trainer.model)


def test_after_resuming_an_older_checkpoint_newest_means_written_last(
    reference: tuple[Trainer, Path], tmp_path: Path
) -> None:
    """`--resume <older checkpoint>` into the same folder: the abandoned later steps are not the newest."""
    _, ref_run = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run / "checkpoints", run / "checkpoints")  # run 1: steps 2, 4, ..., 12, all kept
    resume = str(run / "checkpoints" / "step00000004")
    checkpoint = {"every_n_steps": 2, "keep_last": 2, "keep_best": 0}
    config = tiny_config(["checkpoint", "stop_at"], resume=resume, checkpoint=checkpoint, stop_at={"step": 8})
    second = _trainer(config, run, _StopAt)
    second.fit()  # saves at steps 6 and 8, then is interrupted
    assert second.global_step == 8 and second.stop_reason is not None
    store = CheckpointStore(run / "checkpoints")
    kept = {name: m.step for m, name in store.manifests() if m is not None}
    assert kept == {"step00000006-1": 6, "step00000008": 8}  # run 2's two newest, not run 1's steps 10 and 12
    assert store.latest_name() == "step00000008"
    target = run / "checkpoints" / "step00000008" / "tensors.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step00000008.*resuming instead from 'step00000006-1' \\(step 6\\)"):
        loaded = store.load_latest()
    assert loaded.path.name == "step00000006-1" and loaded.manifest.step == 6


class _Extra(Plugin):
    name = "extra"
    version = "2.0.0"

    def on_step_end(self) -> None:
        return None


def test_fingerprint_mismatch_warns_and_strict_refuses(
    reference: tuple[Trainer, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, ref_run = reference
    path = str(ref_run / "checkpoints" / "step00000010")
    loose = _trainer(tiny_config(["checkpoint", "extra"], resume=path), tmp_path / "loose", _Extra)
    with caplog.at_level(logging.WARNING):
        loose.fit()
    assert "plugin 'extra' 2.0.0 is loaded now but was not when the checkpoint was written" in caplog.text
    strict = _trainer(
        tiny_config(["checkpoint", "extra"], resume=path, checkpoint={"strict_resume": True}), tmp_path / "s", _Extra
    )
    with pytest.raises(AptError, match="plugin set differs.*strict_resume=false"):
        strict.fit()


def test_resume_with_nothing_to_resume_says_how(tmp_path: Path) -> None:
    trainer = _trainer(tiny_config(["checkpoint"], resume="latest"), tmp_path)
    with pytest.raises(AptError, match="nothing to resume from"):
        trainer.fit()
    assert CheckpointStore(tmp_path / "checkpoints").names() == []  # no emergency save of an untrained model


def test_resume_latest_in_a_new_run_folder_continues_the_newest_run(
    reference: tuple[Trainer, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `apt train --resume latest` without run.name gets a fresh time-stamped folder
    ref, _ = reference
    older, newer = tmp_path / "runs" / "older", tmp_path / "runs" / "newer"
    shutil.copytree(reference[1] / "checkpoints", older / "checkpoints")
    CheckpointStore(older / "checkpoints").set_latest("step00000002")
    config = tiny_config(["checkpoint", "stop_at"], checkpoint={"every_n_steps": 4}, stop_at={"step": 7})
    _trainer(config, newer, _StopAt).fit()  # saved at 4 and 7, after `older` was written
    fresh = tmp_path / "runs" / "fresh"
    config = tiny_config(["checkpoint"], resume="latest", run={"dir": str(tmp_path / "runs")})
    with caplog.at_level(logging.WARNING, logger="apt.checkpoint"):
        trainer = _trainer(config, fresh)
        trainer.fit()
    assert f"resuming the newest run's latest checkpoint in {newer / 'checkpoints'}" in caplog.text
    assert same_weights(ref.model, trainer.model)
    assert min(step_losses(fresh)) == 8


class _Histograms(Plugin):
    """Test helper: numpy state, as a plugin may keep it (one histogram per layer)."""

    name = "histograms"
    version = "1.0.0"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.hist = {f"layer{i}": np.full(1000, float(i), dtype=np.float32) for i in range(6)}
        self.restored: Any = None

    def on_save_checkpoint(self) -> dict[str, np.ndarray]:
        return dict(self.hist)

    def on_load_checkpoint(self, state: Any) -> None:
        self.restored = state


def test_distinct_numpy_arrays_of_a_plugin_come_back_distinct_with_async_save(tmp_path: Path) -> None:
    """async_save (the default) must not store same-shape arrays as one (a silently wrong resume)."""
    sections: dict[str, Any] = {
        "training": {"max_epochs": 1, "steps_per_epoch": 2},
        "checkpoint": {"async_save": True},
    }
    _trainer(tiny_config(["checkpoint", "histograms"], **sections), tmp_path, _Histograms).fit()
    # the first run finished: the resume extends it by an epoch (a finished run refuses to resume)
    extended = {**sections, "training": {"max_epochs": 2, "steps_per_epoch": 2}}
    resumed = _trainer(tiny_config(["checkpoint", "histograms"], resume="latest", **extended), tmp_path, _Histograms)
    resumed.fit()
    restored = resumed.plugin_manager.get_plugin("histograms").restored  # type: ignore[attr-defined]
    assert sorted(restored) == [f"layer{i}" for i in range(6)]
    for i in range(6):
        array = restored[f"layer{i}"]
        assert array.dtype == np.float32 and np.array_equal(array, np.full(1000, float(i), dtype=np.float32)), i
