"""The plugin inside the real Trainer: schedule, retention by metric, async, disk checks, save errors."""

from __future__ import annotations

import errno
import json
import logging
import re
from pathlib import Path
from typing import Any

import apt_plugin_checkpoint
import pytest
import torch
from apt.errors import AptError
from apt.errors import ConfigError
from apt.plugins import PluginManager
from apt.train import Trainer
from apt_plugin_checkpoint import CheckpointConfig
from apt_plugin_checkpoint import CheckpointPlugin
from apt_plugin_checkpoint import CheckpointStore
from ckpt_helpers import tiny_config


def _fit(run: Path, training: dict[str, Any] | None = None, **checkpoint: Any) -> Trainer:
    config = tiny_config(["checkpoint"], training=training, checkpoint=checkpoint)
    pm = PluginManager()
    pm.load_from_config(config)
    trainer = Trainer(config, pm, run_dir=run)
    trainer.fit()
    return trainer


def _manifests(run: Path) -> dict[str, dict[str, Any]]:
    store = CheckpointStore(run / "checkpoints")
    return {name: json.loads((store.root / name / "manifest.json").read_text()) for name in store.names()}


def test_public_names_are_sorted_and_exported() -> None:
    assert apt_plugin_checkpoint.__all__ == sorted(apt_plugin_checkpoint.__all__)
    assert all(hasattr(apt_plugin_checkpoint, n) for n in apt_plugin_checkpoint.__all__)
    assert CheckpointPlugin.name == "checkpoint" and CheckpointPlugin.priority < 0


def test_config_rejects_unknown_keys_and_bad_templates() -> None:
    with pytest.raises(ValueError, match="every_n_step"):
        CheckpointConfig(every_n_step=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="plain folder name"):
        CheckpointConfig(filename="../escape{step}")
    with pytest.raises(ConfigError, match="checkpoint.keep_best"):
        PluginManager().load("checkpoint", {"keep_best": -1})


@pytest.mark.parametrize(
    "template",
    [
        "{step.foo}",  # attribute access on an int
        "{step[0]}",  # indexing an int
        "{loss:d}",  # an int spec for a metric, which is a float: every save would fail
    ],
)
def test_filename_template_that_cannot_format_is_refused_when_the_config_is_read(template: str) -> None:
    config = tiny_config(["checkpoint"], checkpoint={"filename": template})
    with pytest.raises(ConfigError, match=rf"checkpoint\.filename.*{re.escape(repr(template))} cannot be formatted"):
        PluginManager().load_from_config(config)


def test_filename_template_with_counters_and_metrics_is_accepted() -> None:
    template = "step{step:08d}-{val_loss:.3f}"
    pm = PluginManager()
    pm.load_from_config(tiny_config(["checkpoint"], checkpoint={"filename": template}))
    assert pm.get_plugin("checkpoint").config.filename == template


def test_schedule_saves_after_validation_and_keeps_newest_and_best(tmp_path: Path) -> None:
    # every 3 steps; validation runs at steps 3 and 9 (val_interval 3), the epochs end at 6 and 12
    _fit(tmp_path, every_n_steps=3, keep_last=2, keep_best=1, filename="e{epoch}-s{step:03d}-{val_loss:.3f}")
    manifests = _manifests(tmp_path)
    by_step = {m["step"]: m for m in manifests.values()}
    assert sorted(by_step)[-2:] == [9, 12]  # the two newest
    for m in manifests.values():
        # saved after this step's validation, so the monitored metric is this step's val_loss
        assert m["name"].endswith(f"-{m['metrics']['val_loss']:.3f}")
        assert m["reason"] in ("step", "epoch")
    # the best val_loss of all saves (3, 6, 9, 12) is kept even when it is not among the newest
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in log if "val_loss" in r and r["step"] in (3, 6, 9, 12)}
    best = min(val, key=lambda s: val[s])
    assert best in by_step
    assert len(manifests) == (2 if best in (9, 12) else 3)
    assert CheckpointStore(tmp_path / "checkpoints").latest_name() == by_step[12]["name"]


def _logged(run: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl merged by step."""
    out: dict[int, dict[str, Any]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(int(record["step"]), {}).update(record)
    return out


# one epoch of 7 steps, saves every 2 steps: validation runs at step 4 (val_interval) and at the
# epoch end (7), never at 2 or 6; the high learning rate makes val_loss fall fast from step 4 to 7
_VALIDATED_4_AND_7 = {"max_epochs": 1, "steps_per_epoch": 7, "val_interval": 4, "lr": 0.3, "warmup_steps": 0}


def test_manifest_records_only_metrics_measured_for_its_weights(tmp_path: Path) -> None:
    _fit(tmp_path, training=_VALIDATED_4_AND_7, every_n_steps=2, keep_last=None)
    logged = _logged(tmp_path)
    by_step = {m["step"]: m["metrics"] for m in _manifests(tmp_path).values()}
    assert sorted(by_step) == [2, 4, 6, 7]
    for step, metrics in by_step.items():
        assert metrics["loss"] == logged[step]["loss"]  # the step's own training metrics
        if step in (4, 7):
            assert metrics["val_loss"] == logged[step]["val_loss"]
        else:  # not the val_loss of step 4, which belongs to other weights
            assert "val_loss" not in metrics and "val_bpb" not in metrics


def test_keep_best_ranks_only_checkpoints_that_were_validated(tmp_path: Path) -> None:
    # mode=max: the best is the highest val_loss, step 4's. A step-6 checkpoint that carried
    # step 4's val_loss would tie with it, win as the newer one and get step 4 deleted.
    _fit(tmp_path, training=_VALIDATED_4_AND_7, every_n_steps=2, keep_last=1, keep_best=1, mode="max")
    logged = _logged(tmp_path)
    assert logged[4]["val_loss"] > logged[7]["val_loss"]  # the premise of this test
    kept = _manifests(tmp_path)
    assert sorted(kept) == ["step00000004", "step00000007"]  # the best validated one + the newest
    assert kept["step00000004"]["metrics"]["val_loss"] == logged[4]["val_loss"]


def test_async_and_time_based_saves_write_the_same_bytes_as_sync(tmp_path: Path) -> None:
    _fit(tmp_path / "sync", every_n_steps=2, keep_last=None)
    _fit(tmp_path / "async", every_n_steps=2, keep_last=None, async_save=True)
    _fit(tmp_path / "time", every_n_steps=None, every_minutes=1e-9, keep_last=None)  # due at every step
    sync, asyn, timed = (_manifests(tmp_path / k) for k in ("sync", "async", "time"))
    assert sorted(sync) == sorted(asyn) and len(sync) == 6
    for name in sync:
        assert sync[name]["files"]["tensors.safetensors"] == asyn[name]["files"]["tensors.safetensors"]
    assert sorted(m["step"] for m in timed.values()) == list(range(1, 13))


def test_not_enough_disk_space_is_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("apt_plugin_checkpoint._plugin.disk_free_bytes", lambda path: 1 << 20)
    with pytest.raises(AptError, match=r"not enough disk space for one checkpoint.*MiB needed.*checkpoint.dir"):
        _fit(tmp_path)


@pytest.mark.parametrize("policy", ["continue", "stop"])
@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_failed_save_is_reported_and_the_run_continues_or_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, policy: str, async_save: bool
) -> None:
    real_save = CheckpointStore.save

    def flaky(self: CheckpointStore, encoded: Any, **kwargs: Any) -> Any:
        if kwargs["step"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, encoded, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", flaky)
    with caplog.at_level(logging.ERROR, logger="apt.checkpoint"):
        trainer = _fit(tmp_path, every_n_steps=2, keep_last=None, on_save_error=policy, async_save=async_save)
    # an async save's failure is noticed a little later, but still reported for the step it saved
    assert "checkpoint save failed at step 4" in caplog.text and "No space left" in caplog.text
    steps = sorted(m["step"] for m in _manifests(tmp_path).values())
    if policy == "continue":
        assert trainer.global_step == 12 and 4 not in steps and steps[-1] == 12
    else:
        assert trainer.stop_reason and "checkpoint save failed at step 4" in trainer.stop_reason
        assert 4 not in steps  # the failed save never became a checkpoint, nor `latest`
        if not async_save:  # sync: the stop comes at once, so nothing after step 2 was saved
            assert trainer.global_step == 4 and steps == [2]
            assert CheckpointStore(tmp_path / "checkpoints").latest_name() == "step00000002"


def _crash_at(trainer: Trainer, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``trainer.train_step`` raise ``RuntimeError('simulated crash')`` when ``global_step == step``."""
    real_step = trainer.train_step

    def failing_step(x: Any, y: Any) -> Any:
        if trainer.global_step == step:
            raise RuntimeError("simulated crash")
        return real_step(x, y)

    monkeypatch.setattr(trainer, "train_step", failing_step)


def test_emergency_save_on_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(["checkpoint"], checkpoint={"every_n_steps": None, "every_n_epochs": None})
    trainer = Trainer(config, run_dir=tmp_path)
    _crash_at(trainer, 5, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit()
    manifests = _manifests(tmp_path)
    assert [(n, m["step"], m["reason"]) for n, m in manifests.items()] == [("step00000005-exception", 5, "exception")]
    # taken while failing (maybe mid-step): durable and loadable by path, but never `latest` nor a fallback
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.latest_name() is None
    with pytest.raises(AptError, match="only emergency checkpoints.*--resume .*step00000005-exception"):
        store.load_latest()
    assert store.load("step00000005-exception").state["trainer"]["counters"]["global_step"] == 5


def test_no_emergency_save_under_fsdp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sharded state needs every rank to gather it, and a failing run cannot promise that: skipped, and said."""
    config = tiny_config(["checkpoint"], checkpoint={"every_n_steps": 2, "every_n_epochs": None})
    trainer = Trainer(config, run_dir=tmp_path)
    trainer.setup()
    trainer.parallelism = "fsdp"  # what the plugin reads under torchrun with fsdp; one process shows the decision
    _crash_at(trainer, 3, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="apt.checkpoint"), pytest.raises(RuntimeError, match="simulated"):
        trainer.fit()
    assert "no emergency checkpoint under FSDP2" in caplog.text
    assert [m["step"] for m in _manifests(tmp_path).values()] == [2]


def _fail_once_at(monkeypatch: pytest.MonkeyPatch, step: int) -> list[str]:
    """Make the first ``CheckpointStore.save`` at ``step`` fail with ENOSPC (a transient disk-full).

    Returns the list that receives the failed save's ``reason``.
    """
    real_save = CheckpointStore.save
    failed: list[str] = []

    def flaky(self: CheckpointStore, encoded: Any, **kwargs: Any) -> Any:
        if kwargs["step"] == step and not failed:
            failed.append(kwargs["reason"])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, encoded, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", flaky)
    return failed


def _holds_weights_of(state: dict[str, Any], trainer: Trainer) -> bool:
    assert trainer.model is not None
    live = trainer.model.state_dict()
    return sorted(state["model"]) == sorted(live) and all(torch.equal(state["model"][k], v) for k, v in live.items())


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_failed_save_at_the_last_step_does_not_skip_the_train_end_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    failed = _fail_once_at(monkeypatch, 12)
    trainer = _fit(tmp_path, every_n_steps=4, keep_last=None, async_save=async_save, save_on_train_end=True)
    assert failed == ["epoch"]  # the save due at the end of the last epoch failed once
    # the step was not saved, so the train-end save writes the final state and `latest` names it
    final = [(name, m["reason"]) for name, m in _manifests(tmp_path).items() if m["step"] == 12]
    assert final == [("step00000012", "train_end")]
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.latest_name() == "step00000012"
    state = store.load("step00000012").state["trainer"]
    assert state["counters"]["global_step"] == trainer.global_step == 12
    assert _holds_weights_of(state, trainer)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_crash_right_after_a_failed_save_still_writes_the_emergency_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool
) -> None:
    failed = _fail_once_at(monkeypatch, 4)
    config = tiny_config(["checkpoint"], checkpoint={"every_n_steps": 2, "keep_last": None, "async_save": async_save})
    trainer = Trainer(config, run_dir=tmp_path)
    _crash_at(trainer, 4, monkeypatch)  # step 5 fails before its update: the state at the crash is step 4's
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit()
    assert failed == ["step"]
    saved = [(name, m["step"], m["reason"]) for name, m in sorted(_manifests(tmp_path).items())]
    assert saved == [("step00000002", 2, "step"), ("step00000004-exception", 4, "exception")]
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.latest_name() == "step00000002"  # the emergency checkpoint is never `latest`
    state = store.load("step00000004-exception").state["trainer"]
    assert state["counters"]["global_step"] == trainer.global_step == 4
    assert _holds_weights_of(state, trainer)


@pytest.mark.parametrize(("monitor", "mode"), [("val_bpb", "min"), ("val_bpb", "max"), (None, "min")])
def test_keep_best_ranks_by_the_configured_monitor_after_a_resume_with_another(
    tmp_path: Path, monitor: str | None, mode: str
) -> None:
    # run 1 ranks by val_loss and keeps everything: epoch saves at steps 6 and 12
    _fit(tmp_path, every_n_steps=None, keep_last=None, monitor="val_loss")
    assert sorted(m["monitor"] for m in _manifests(tmp_path).values()) == ["val_loss", "val_loss"]
    # run 2 continues in the same folder with another monitor (None: keep_best ranks nothing)
    checkpoint = {"every_n_steps": None, "keep_last": 1, "keep_best": 1, "monitor": monitor, "mode": mode}
    config = tiny_config(["checkpoint"], resume="latest", training={"max_epochs": 4}, checkpoint=checkpoint)
    Trainer(config, run_dir=tmp_path).fit()
    logged = _logged(tmp_path)
    expected = {24}  # keep_last=1: the newest
    if monitor is not None:  # and the best by the configured monitor, in the configured direction
        values = {step: logged[step][monitor] for step in (6, 12, 18, 24)}
        expected.add((min if mode == "min" else max)(values, key=values.__getitem__))
    assert {m["step"] for m in _manifests(tmp_path).values()} == expected
