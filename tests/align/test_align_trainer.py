"""The align plugin inside the real Trainer: activation, schedules, EMA-only mode, resume, stable weights."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from apt.core import APTConfig
from apt.model import GPT
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.train import Trainer
from apt.train import load_weights
from apt_plugin_align import AlignPlugin
from apt_plugin_align import load_stable_weights
from apt_plugin_align import stable_weights_path


def _config(plugins: list[str], align: dict[str, Any] | None = None, **extra: Any) -> APTConfig:
    """Two epochs of four steps on a tiny model (well under a second on a CPU)."""
    data: dict[str, Any] = {
        "plugins": plugins,
        "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "d_model": 16},
        "training": {
            "max_epochs": 2, "steps_per_epoch": 4, "batch_size": 2, "grad_accum": 2, "val_batches": 1,
            "val_interval": 1000, "log_interval": 1, "device": "cpu", "seed": 0,
        },
    }  # fmt: skip
    if align is not None:
        data["align"] = align
    data.update(extra)
    return APTConfig(**data)


def _trainer(config: APTConfig, run_dir: Path | None = None, *extra: type[Plugin]) -> Trainer:
    pm = PluginManager()
    pm.register_plugin("align", AlignPlugin)
    for cls in extra:
        assert cls.name is not None
        pm.register_plugin(cls.name, cls)
    pm.load_from_config(config)
    return Trainer(config, pm, run_dir=run_dir)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _align_keys(record: dict[str, Any]) -> set[str]:
    return {k for k in record if k.startswith(("align/", "loss/align_"))}


def _plugin(trainer: Trainer) -> AlignPlugin:
    plugin = trainer.plugin_manager.get_plugin("align")
    assert isinstance(plugin, AlignPlugin)
    return plugin


_DETERMINISTIC = ("loss", "grad_norm", "lr", "val_loss", "train_loss")


def test_no_effect_before_activation(tmp_path: Path) -> None:
    """Epoch 0 (before align.start_epoch = 1) is bitwise the run without the plugin; epoch 1 is not."""
    # dropout on: a plugin that drew random numbers before activation would change the losses
    plain_cfg, align_cfg = _config([]), _config(["align"])
    plain_cfg.model.dropout = align_cfg.model.dropout = 0.1
    _trainer(plain_cfg, tmp_path / "plain").fit()
    trainer = _trainer(align_cfg, tmp_path / "align")
    trainer.fit()
    plain, align = _records(tmp_path / "plain"), _records(tmp_path / "align")
    assert len(plain) == len(align) == 8
    for a, b in zip(plain[:4], align[:4], strict=True):
        assert b["epoch"] == 0 and not _align_keys(b)
        assert {k: a.get(k) for k in _DETERMINISTIC} == {k: b.get(k) for k in _DETERMINISTIC}
    assert all(r["loss/align_kl"] >= 0 and "loss/align_hidden" in r for r in align[4:])
    assert plain[-1]["val_loss"] != align[-1]["val_loss"]  # the alignment loss changed training
    plugin = _plugin(trainer)
    assert plugin.activation_step == 4 and plugin.activation_epoch == 1
    assert plugin.stable is not None and plugin.stable.num_updates == 4


def test_schedule_enables_align_at_epoch_1(tmp_path: Path) -> None:
    """schedules: {enable_align_at_epoch: 1} shows align terms in metrics.jsonl from epoch 1 on, none before."""
    run = tmp_path / "run"
    trainer = _trainer(_config(["align"], {"start_epoch": 0}, schedules={"enable_align_at_epoch": 1}), run)
    trainer.fit()
    records = _records(run)
    step_keys = {"loss/align_kl", "loss/align_hidden", "align/w", "align/kl", "align/hidden", "align/decay"}
    val_keys = {"align/stable_val_loss", "align/live_val_loss", "align/argmax_agreement", "align/param_drift"}
    for r in records:
        if r["epoch"] == 0:
            assert not _align_keys(r), r
        else:
            assert step_keys <= _align_keys(r), r
    last = records[-1]
    assert val_keys <= set(last)
    assert last["align/live_val_loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert 0.0 <= last["align/argmax_agreement"] <= 1.0
    assert 0.0 < last["align/param_drift"] < 1.0
    # the first active step starts the sigmoid ramp and the MT warm-up decay
    first = records[4]
    assert first["align/w"] == pytest.approx(0.0067379, abs=5e-8)
    assert first["align/decay"] == 0.5 and first["align/kl"] == 0.0
    # the stable state never takes part in autograd
    stable = _plugin(trainer).stable
    assert stable is not None
    assert all(not p.requires_grad and p.grad is None for p in stable.module.parameters())


def test_bf16_autocast_run_is_finite(tmp_path: Path) -> None:
    """Under bf16 autocast the teacher pass runs in autocast too and every align metric stays finite."""
    config = _config(["align"], {"start_epoch": 0})
    config.training.precision = "bf16"
    trainer = _trainer(config, tmp_path / "run")
    trainer.fit()
    last = _records(tmp_path / "run")[-1]
    values = [v for k, v in last.items() if k in _align_keys(last)]
    assert len(values) >= 8 and all(math.isfinite(v) for v in values)
    stable = _plugin(trainer).stable
    assert stable is not None and all(p.dtype == torch.float32 for p in stable.module.parameters())


def test_stable_weights_file_and_provider(tmp_path: Path) -> None:
    """At train end the stable state is written; the weights:stable provider loads it into a GPT."""
    run = tmp_path / "run"
    trainer = _trainer(_config(["align"], {"start_epoch": 0}), run)
    trainer.fit()
    assert stable_weights_path(run).is_file()
    factory = trainer.registry.get("weights", "stable")
    weights = factory(run_dir=run)
    model = GPT(trainer.config.model, trainer.registry)
    load_weights(model, weights)
    stable = _plugin(trainer).stable
    assert stable is not None
    for name, tensor in stable.module.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.lm_head.weight is model.wte.weight
    live = trainer.model
    assert isinstance(live, GPT)
    assert not torch.equal(model.wte.weight, live.wte.weight)


def test_a_scheduled_disable_writes_the_stable_weights_it_stops_at(tmp_path: Path) -> None:
    """No on_train_end reaches a disabled plugin: align writes its stable state when the schedule stops it."""
    run = tmp_path / "run"
    config = _config(["align"], {"start_epoch": 0}, schedules={"disable_align_at_epoch": 1})
    trainer = _trainer(config, run)
    trainer.fit()
    stable = _plugin(trainer).stable
    assert stable is not None and stable.num_updates == 4  # the four steps of epoch 0
    saved = load_stable_weights(run)
    for name, tensor in stable.module.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name


def test_the_teacher_routes_with_the_live_moe_capacity(tmp_path: Path) -> None:
    """An annealed moe_capacity reaches the stable copy's MoE layers before each teacher pass."""
    pytest.importorskip("apt_plugin_moe")
    from apt_plugin_moe import MoEPlugin
    from apt_plugin_moe import moe_layers

    config = _config(
        ["align", "moe"],
        {"start_epoch": 0},
        moe={"num_experts": 4, "top_k": 1},
        schedules={"moe_capacity": {"start": 4.0, "end": 0.5, "by": "step"}},
    )
    trainer = _trainer(config, None, MoEPlugin)
    seen: list[tuple[list[Any], list[Any]]] = []
    align = _plugin(trainer)
    teacher_forward = type(align).on_compute_loss

    def spy(self: AlignPlugin, trainer: Any, model: Any, batch: Any, outputs: Any) -> Any:
        out = teacher_forward(self, trainer, model, batch, outputs)
        assert self.stable is not None
        live = [layer.capacity_factor for _, layer in moe_layers(model)]
        seen.append((live, [layer.capacity_factor for _, layer in moe_layers(self.stable.module)]))
        return out

    align.on_compute_loss = spy.__get__(align)  # type: ignore[method-assign]
    trainer.plugin_manager.hook_manager.unregister("on_compute_loss", teacher_forward.__get__(align))
    trainer.plugin_manager.hook_manager.register("on_compute_loss", align.on_compute_loss, owner=align)
    trainer.fit()
    assert len(seen) == 16 and len({live[0] for live, _ in seen}) > 1  # the capacity really moved
    assert all(live == stable for live, stable in seen)


def test_align_starting_mid_epoch_copies_a_model_that_keeps_forward_tensors() -> None:
    """MoE layers keep their last balance/z losses (tensors of the last forward's graph); align's copy
    of the model, taken right after a training step, must not choke on them."""
    pytest.importorskip("apt_plugin_moe")
    from apt_plugin_moe import MoEPlugin

    config = _config(
        ["align", "moe"], {"start_epoch": 0}, moe={"num_experts": 4}, schedules={"enable_align_at_step": 3}
    ).with_overrides(["training.plugin_errors=raise"])
    trainer = _trainer(config, None, MoEPlugin)
    trainer.fit()
    stable = _plugin(trainer).stable
    assert stable is not None and stable.num_updates == 5  # steps 3..7


def test_a_schedule_that_stops_align_right_after_a_resume_still_writes_the_stable_weights(
    tmp_path: Path, state_saver: Any
) -> None:
    Saver, captured = state_saver("on_epoch_end", 0)

    config = _config(["align", "saver"], {"start_epoch": 0}, schedules={"disable_align_at_epoch": 1})
    _trainer(config, tmp_path / "full", Saver).fit()

    class Resumer(Plugin):
        name = "resumer"

        def on_resume(self) -> Any:
            return captured["state"]

    resumed_config = config.model_copy(deep=True)
    resumed_config.plugins = ["align", "saver", "resumer"]
    resumed_config.training.resume = "latest"
    _trainer(resumed_config, tmp_path / "resumed", Saver, Resumer).fit()
    full, resumed = load_stable_weights(tmp_path / "full"), load_stable_weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name


def test_missing_stable_weights_say_how_to_get_them(tmp_path: Path) -> None:
    """The provider names the file and the fix when a run has no stable weights."""
    from apt.errors import CheckpointError

    with pytest.raises(CheckpointError, match="stable.safetensors.*align plugin"):
        load_stable_weights(tmp_path)


def test_ema_only_mode_skips_the_teacher_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """alpha = beta = 0: same number of model forwards and bitwise the same losses as without the plugin."""
    calls = {"n": 0}
    original = GPT.forward

    def counting(self: GPT, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", counting)
    no_val = {"start_epoch": 0, "eval_stable": False}

    def run(config: APTConfig, name: str) -> tuple[int, list[dict[str, Any]], Trainer]:
        calls["n"] = 0
        trainer = _trainer(config, tmp_path / name)
        trainer.fit()
        return calls["n"], _records(tmp_path / name), trainer

    n_plain, plain, _ = run(_config([]), "plain")
    n_ema, ema, trainer = run(_config(["align"], {"alpha": 0, "beta": 0, **no_val}), "ema")
    n_full, _, _ = run(_config(["align"], no_val), "full")
    assert n_ema == n_plain
    assert n_full == n_plain + 8 * 2  # one teacher forward per micro-batch: 8 steps x grad_accum 2
    for a, b in zip(plain, ema, strict=True):
        assert {k: a.get(k) for k in _DETERMINISTIC} == {k: b.get(k) for k in _DETERMINISTIC}
        assert "loss/align_kl" not in b and "align/kl" not in b
        assert "align/decay" in b  # the EMA is still tracked
    stable = _plugin(trainer).stable
    assert stable is not None and stable.num_updates == 8


class _Snapshot(Plugin):
    """Takes ``trainer.state_dict()`` after step ``stop_after`` and stops; answers ``on_resume`` with it."""

    name = "snapshot"
    version = "1.0.0"
    critical = True
    stop_after = 0
    saved: dict[str, Any] | None = None

    def on_step_end(self, trainer: Any, step: int) -> None:
        if trainer.config.training.resume is None and step + 1 == self.stop_after:
            type(self).saved = copy.deepcopy(trainer.state_dict())
            trainer.request_stop("snapshot taken", source="snapshot")

    def on_resume(self, resume: str) -> Any:
        return type(self).saved


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    """One uninterrupted run with the snapshot plugin loaded (it never fires), shared by the resume tests."""
    run = tmp_path_factory.mktemp("full")
    _Snapshot.stop_after, _Snapshot.saved = 0, None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the autouse fixture does for each test (conftest.py)
    try:
        trainer = _trainer(_config(["align", "snapshot"]), run, _Snapshot)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer, run


@pytest.mark.parametrize("stop_after", [6, 2], ids=["after-activation", "before-activation"])
def test_resume_continues_the_ema_exactly(tmp_path: Path, uninterrupted: tuple[Trainer, Path], stop_after: int) -> None:
    """Stop after N steps, resume in a fresh trainer: the stable state and the losses equal an uninterrupted run."""
    full, full_dir = uninterrupted
    _Snapshot.stop_after, _Snapshot.saved = stop_after, None
    first = _trainer(_config(["align", "snapshot"]), tmp_path / "first", _Snapshot)
    first.fit()
    assert first.global_step == stop_after and _Snapshot.saved is not None
    plugins_state = _Snapshot.saved["plugins"].get("align", {}).get("state")
    assert (plugins_state is None) == (stop_after < 4)  # nothing to save before activation
    config = _config(["align", "snapshot"])
    config.training.resume = "snapshot"
    resumed = _trainer(config, tmp_path / "resumed", _Snapshot)
    resumed.fit()
    _Snapshot.stop_after = 0
    a, b = _plugin(full).stable, _plugin(resumed).stable
    assert a is not None and b is not None
    assert a.num_updates == b.num_updates == 4
    for (name, ta), (_, tb) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert torch.equal(ta, tb), name
    tail = _records(tmp_path / "resumed")
    by_step = {r["step"]: r for r in _records(full_dir)}
    assert [r["step"] for r in tail] == list(range(stop_after + 1, 9))
    for r in tail:
        assert r["loss"] == by_step[r["step"]]["loss"]
        assert r.get("loss/align_kl") == by_step[r["step"]].get("loss/align_kl")


class _SwapFFN(Plugin):
    """Replaces block 0's FFN at the start of epoch 1, as MoE upcycling does, and syncs the optimizer."""

    name = "swap_ffn"
    version = "1.0.0"

    def on_epoch_begin(self, trainer: Any, model: Any, epoch: int) -> None:
        if epoch == 1:
            model.blocks[0].ffn = torch.nn.Sequential(torch.nn.Linear(16, 16, bias=False))
            trainer.sync_optimizer()


def test_model_change_mid_run_rebuilds_the_stable_state(tmp_path: Path, make_gpt: Callable[..., GPT]) -> None:
    """A plugin replacing a module after activation: the stable copy follows, keeping the unchanged EMA tensors."""
    trainer = _trainer(_config(["align", "swap_ffn"], {"start_epoch": 0}), tmp_path / "run", _SwapFFN)
    trainer.fit()
    stable = _plugin(trainer).stable
    assert stable is not None and stable.num_updates == 8
    names = {n for n, _ in stable.module.named_parameters()}
    assert "blocks.0.ffn.0.weight" in names and "blocks.0.ffn.c_fc.weight" not in names
    assert stable.matches(trainer.model)  # type: ignore[arg-type]
    assert all(torch.isfinite(p).all() for p in stable.module.parameters())
