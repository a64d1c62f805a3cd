"""The moe plugin in the kernel and trainer: providers, losses, metrics, upcycling, state, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from apt.core import ProviderRegistry
from apt.model import GPT
from apt.plugins import HookManager
from apt.plugins import PluginManager
from apt.testing import tiny_config
from apt.train import Trainer
from apt_plugin_moe import MoEConfig
from apt_plugin_moe import MoELayer
from apt_plugin_moe import MoEPlugin
from apt_plugin_moe import moe_layers
from apt_plugin_moe import plot_expert_load
from apt_plugin_moe import router_z_loss
from apt_plugin_moe import switch_load_balancing_loss


FAST = ["training.steps_per_epoch=2", "training.val_batches=1", "moe.num_experts=4"]


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _plugin(**cfg: Any) -> tuple[MoEPlugin, ProviderRegistry]:
    plugin = MoEPlugin(MoEConfig(**cfg))
    registry = ProviderRegistry()
    plugin.setup(registry, HookManager())
    return plugin, registry


def test_metadata_and_entry_point_contract() -> None:
    """Name, version, providers and config model are what the contract and pyproject promise."""
    assert (MoEPlugin.name, MoEPlugin.version, MoEPlugin.config_model) == ("moe", "1.0.0", MoEConfig)
    assert {"router:topk", "ffn:moe"} <= set(MoEPlugin.providers)


def test_providers_build_with_core_signatures() -> None:
    """ffn:moe takes the core ffn keywords; router:topk takes (d_model, num_experts, top_k, **opts)."""
    plugin, registry = _plugin(num_experts=4, top_k=2, expert_ffn="swiglu", d_ff=24)
    layer = registry.build("ffn", "moe", d_model=16, d_ff=64, dropout=0.0, bias=False)
    assert isinstance(layer, MoELayer) and layer.d_ff == 24 and layer.experts.num_experts == 4
    assert layer(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    router = registry.build("router", "topk", d_model=16, num_experts=4, top_k=1, jitter=0.1)
    assert router(torch.randn(5, 16)).experts.shape == (5, 1)


def test_gpt_with_ffn_moe_provider() -> None:
    """model.ffn = 'moe' builds every block's FFN from the plugin's provider."""
    _, registry = _plugin(num_experts=4, top_k=2)
    cfg = tiny_config(model={"ffn": "moe"}).model
    model = GPT(cfg, registry)
    assert len(moe_layers(model)) == cfg.n_layer
    out = model(torch.randint(0, 256, (2, 8)), targets=torch.randint(0, 256, (2, 8)))
    assert out.loss is not None and torch.isfinite(out.loss)


def test_loss_terms_come_from_each_micro_batch_forward() -> None:
    """on_compute_loss returns the weighted balance / z terms of the forward that just ran (grad accumulation)."""
    torch.manual_seed(0)
    plugin, registry = _plugin(num_experts=4, top_k=2, aux_loss_weight=0.5, z_loss_weight=0.25, layers=[1])
    model = GPT(tiny_config().model, registry)
    plugin.on_model_built(model=model, config=tiny_config())
    ((_, layer),) = moe_layers(model)
    model.train()
    for seed in (1, 2):  # two micro-batches: each call sees its own forward
        idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(seed))
        seen: dict[str, torch.Tensor] = {}

        def grab(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen["x"] = inputs[0]  # noqa: B023  (used before the next iteration rebinds `seen`)

        hook = layer.register_forward_hook(grab)
        model(idx)
        hook.remove()
        r = layer.router(seen["x"].reshape(-1, 32))
        terms = plugin.on_compute_loss(model=model)
        assert terms is not None
        torch.testing.assert_close(terms["moe_aux"], 0.5 * switch_load_balancing_loss(r.probs, r.experts, 4))
        torch.testing.assert_close(terms["moe_z"], 0.25 * router_z_loss(r.logits))
        assert terms["moe_aux"].requires_grad
    # both micro-batches are in the step's statistics, read once
    metrics = plugin.on_step_end(model=model)
    assert metrics is not None
    loads = [metrics[f"moe/layer1/load_e{j}"] for j in range(4)]
    assert sum(loads) == pytest.approx(1.0)
    acc = layer.stats_tensor()
    assert acc is not None and float(acc.sum()) == 0.0  # reset after reading


def test_eval_forwards_do_not_count() -> None:
    """Validation (eval mode) leaves the step statistics alone."""
    layer = MoELayer(8, 16, num_experts=2, top_k=1)
    layer.eval()
    layer(torch.randn(1, 4, 8))
    assert layer.stats_tensor() is None


def test_apt_train_writes_moe_metrics_and_loss_terms(tmp_path: Path) -> None:
    """`apt train --plugins moe` logs moe/ metrics and loss/moe_* terms; `apt plot` draws the load heatmap."""
    import yaml
    from apt.cli import main
    from apt.testing import TINY_CONFIG

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    run_dir = tmp_path / "run"
    sets = [*FAST, "training.max_epochs=1", "training.grad_accum=2", "moe.capacity_factor=1.0"]
    argv = ["train", "--config", str(config), "--plugins", "moe", "--run-dir", str(run_dir)]
    assert main([*argv, *(arg for s in sets for arg in ("--set", s))]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["name"] for p in summary["plugins"]] == ["moe"]
    steps = [r for r in _records(run_dir) if "moe/aux_loss" in r]
    assert len(steps) == summary["steps"] == 2
    for r in steps:
        assert r["loss/moe_aux"] == pytest.approx(0.01 * r["moe/aux_loss"], rel=1e-4)
        assert r["loss/moe_z"] == pytest.approx(0.001 * r["moe/z_loss"], rel=1e-4)
        for layer in (0, 1):
            assert sum(r[f"moe/layer{layer}/load_e{j}"] for j in range(4)) == pytest.approx(1.0)
            assert 0.0 <= r[f"moe/layer{layer}/dropped_frac"] < 1.0
            assert 0.0 < r[f"moe/layer{layer}/entropy"] <= 1.0
    # `apt plot RUN_DIR` loads the run's plugins (from config.yaml, through the installed entry point) and calls
    # every plot provider
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "plots" / "moe_load.png").stat().st_size > 1000


def test_plot_provider_draws_heatmap(tmp_path: Path) -> None:
    """The plot provider writes plots/moe_load.png from records and nothing without MoE records."""
    records = [
        {"step": s, **{f"moe/layer{i}/load_e{j}": (j + 1) / 10 for i in (0, 2) for j in range(4)}} for s in (1, 2, 3)
    ]
    assert plot_expert_load([{"step": 1, "loss": 1.0}], tmp_path) == []
    (path,) = plot_expert_load(records, tmp_path)
    assert path == tmp_path / "plots" / "moe_load.png" and path.stat().st_size > 1000


def _scheduled_config(**extra: Any) -> Any:
    return tiny_config(
        plugins=["moe"],
        moe={"num_experts": 4, "top_k": 2, "layers": [0]},
        schedules={"enable_moe_at_epoch": 1, **extra},
        training={"steps_per_epoch": 2, "val_batches": 1},
    )


def _trainer(config: Any) -> Trainer:
    pm = PluginManager()
    pm.register_plugin("moe", MoEPlugin)
    pm.load_from_config(config)
    trainer = Trainer(config, pm)
    trainer.setup()
    return trainer


def test_upcycling_preserves_model_output_and_feeds_the_optimizer() -> None:
    """on_enable at epoch 1 swaps the dense FFN for an MoE with the same output; the optimizer gets its parameters."""
    trainer = _trainer(_scheduled_config())
    model = trainer.model
    assert model is not None and moe_layers(model) == []
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        before = model(idx).logits
    plugin = trainer.plugin_manager.get_plugin("moe")
    plugin.enable()
    plugin.on_enable(trainer=trainer, epoch=1, step=2)
    assert [i for i, _ in moe_layers(model)] == [0]
    with torch.no_grad():
        after = model(idx).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert trainer.optimizer is not None
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.parameters())


def test_scheduled_run_upcycles_at_epoch_1_and_resumes(tmp_path: Path) -> None:
    """enable_moe_at_epoch: 1 trains dense in epoch 0 and MoE from epoch 1; a fresh trainer resumes the MoE state."""
    config = _scheduled_config(moe_aux_loss_weight={"start": 0.1, "end": 0.0, "by": "step"})
    pm = PluginManager()
    pm.register_plugin("moe", MoEPlugin)
    pm.load_from_config(config)
    trainer = Trainer(config, pm, run_dir=tmp_path)
    trainer.fit()
    plugin = pm.get_plugin("moe")
    assert isinstance(plugin, MoEPlugin) and plugin.upcycled_at == {"epoch": 1, "step": 2}
    records = _records(tmp_path)
    assert all("moe/aux_loss" not in r for r in records if r["epoch"] == 0)
    moe_records = [r for r in records if r["epoch"] == 1]
    assert moe_records and all("moe/layer0/load_e0" in r for r in moe_records)
    weights = [r["moe/aux_loss_weight"] for r in moe_records]
    assert weights == sorted(weights, reverse=True) and weights[0] < 0.1  # annealed by step
    assert trainer.model is not None
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}  # type: ignore[union-attr]
    assert all(id(p) in in_opt for p in trainer.model.parameters())

    state = trainer.state_dict()
    assert state["plugins"]["moe"]["state"]["layers"] == [0]
    fresh = _trainer(config)
    fresh.load_state_dict(state)
    assert fresh.model is not None and [i for i, _ in moe_layers(fresh.model)] == [0]
    for (k, a), (_, b) in zip(trainer.model.state_dict().items(), fresh.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    fresh_plugin = fresh.plugin_manager.get_plugin("moe")
    assert isinstance(fresh_plugin, MoEPlugin) and fresh_plugin.aux_loss_weight == plugin.aux_loss_weight


def test_capacity_and_loss_weights_follow_their_schedules() -> None:
    """moe_capacity / moe_aux_loss_weight / moe_z_loss_weight anneal by step, read at each step begin."""
    from types import SimpleNamespace

    from apt.core import Schedule

    plugin, registry = _plugin(num_experts=4, top_k=2)
    model = GPT(tiny_config().model, registry)
    plugin.on_model_built(model=model, config=tiny_config())
    schedule = Schedule(
        {
            "moe_capacity": {"start": 2.0, "end": 1.0, "by": "step"},
            "moe_aux_loss_weight": {"start": 0.1, "end": 0.0, "by": "step", "curve": "cosine"},
            "moe_z_loss_weight": {"start": 0.0, "end": 0.01, "by": "step"},
        }
    )
    schedule.bind(total_epochs=1, steps_per_epoch=10)
    trainer = SimpleNamespace(schedule=schedule)
    plugin.on_step_begin(trainer=trainer, model=model, epoch=0, step=5)
    assert plugin.capacity_factor == pytest.approx(1.5)
    assert plugin.aux_loss_weight == pytest.approx(0.05)
    assert plugin.z_loss_weight == pytest.approx(0.005)
    assert all(layer.capacity_factor == pytest.approx(1.5) for _, layer in moe_layers(model))
    state = plugin.on_save_checkpoint(trainer=SimpleNamespace(model=model))
    other, _ = _plugin(num_experts=4, top_k=2)
    other.on_load_checkpoint(trainer=SimpleNamespace(model=model), state=state)
    assert (other.capacity_factor, other.aux_loss_weight) == (plugin.capacity_factor, plugin.aux_loss_weight)


def test_mismatched_checkpoint_and_bad_layers_are_named_errors() -> None:
    """A checkpoint with MoE blocks the model lacks, and moe.layers out of range, raise typed errors."""
    from types import SimpleNamespace

    from apt.errors import CheckpointError
    from apt.errors import ConfigError

    plugin, registry = _plugin(num_experts=2, top_k=1, layers=[1])
    model = GPT(tiny_config().model, registry)
    plugin.on_model_built(model=model, config=tiny_config())
    state = plugin.on_save_checkpoint(trainer=SimpleNamespace(model=model))
    dense = GPT(tiny_config().model, registry)
    with pytest.raises(CheckpointError, match=r"blocks \[1\]"):
        plugin.on_load_checkpoint(trainer=SimpleNamespace(model=dense), state=state)
    bad, registry = _plugin(num_experts=2, top_k=1, layers=[5])
    with pytest.raises(ConfigError, match="moe.layers"):
        bad.on_model_built(model=GPT(tiny_config().model, registry), config=tiny_config())


def test_generate_rebuilds_a_run_that_stopped_before_its_scheduled_upcycling(tmp_path: Path) -> None:
    """A run stopped in epoch 0 never upcycled; `apt generate` must rebuild it dense, not with experts."""
    from apt.cli import main

    config = tiny_config(plugins=["moe"], schedules={"enable_moe_at_epoch": 1}).with_overrides(FAST)
    pm = PluginManager()
    pm.load_from_config(config)

    def stop(trainer: Any, step: int) -> None:
        if step == 0:
            trainer.request_stop("enough", source="test")

    pm.hook_manager.register("on_step_end", stop)
    summary = Trainer(config, pm, run_dir=tmp_path).fit()
    pm.teardown_all()
    assert summary["steps"] == 1 and not _has_experts(tmp_path)
    assert main(["generate", "--run", str(tmp_path), "--max-new-tokens", "4"]) == 0


def _has_experts(run_dir: Path) -> bool:
    from safetensors.torch import load_file

    return any("experts" in name for name in load_file(run_dir / "model.safetensors"))


def test_a_state_taken_just_before_a_step_scheduled_upcycling_resumes_exactly(state_saver: Any) -> None:
    """The state after step 2 holds global_step 3; enable_moe_at_step 3 must fire before step 3 of the
    resumed run, after the dense weights are loaded, not while the state is being restored."""

    from apt.testing import RecordingPlugin
    from apt.testing import run_tiny_training

    overrides = [*FAST, "training.steps_per_epoch=3", "schedules.enable_moe_at_step=3"]
    Saver, captured = state_saver("on_step_end", 2)

    full = run_tiny_training(MoEPlugin, Saver, overrides=overrides, round_trip=False)

    class Resumer(RecordingPlugin):
        resume_state = captured["state"]

    resumed = run_tiny_training(
        MoEPlugin, Resumer, overrides=[*overrides, "training.resume=latest"], round_trip=False, record=False
    )
    tail = [c["loss"] for c in resumed.plugin_manager.get_plugin("recorder").calls("on_step_end")]
    assert tail == [c["loss"] for c in full.recorder.calls("on_step_end")][3:]
    assert moe_layers(resumed.trainer.model)
