"""The vft plugin in the kernel and trainer: providers, config errors, tau's schedule, loss term, metrics, a run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from apt.core import ProviderRegistry
from apt.core import Schedule
from apt.errors import ConfigError
from apt.model import GPT
from apt.plugins import HookManager
from apt.testing import TINY_CONFIG
from apt.testing import tiny_config
from apt_plugin_vft import TriVeinAttention
from apt_plugin_vft import VeinFlowFFN
from apt_plugin_vft import VFTConfig
from apt_plugin_vft import VFTPlugin
from apt_plugin_vft import vein_modules


def _plugin(**cfg: Any) -> tuple[VFTPlugin, ProviderRegistry]:
    plugin = VFTPlugin(VFTConfig(**cfg))
    registry = ProviderRegistry()
    plugin.setup(registry, HookManager())
    return plugin, registry


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_metadata_and_providers_with_core_signatures() -> None:
    """attention:tva and ffn:vft build from the core keywords; the vft section shapes them."""
    assert (VFTPlugin.name, VFTPlugin.config_model) == ("vft", VFTConfig)
    assert set(VFTPlugin.providers) == {"attention:tva", "ffn:vft"}
    _, registry = _plugin(rank=4, ffn_rank=8, hidden_mult=3, fold=False, compensator=False, tau=0.7)
    attn = registry.build("attention", "tva", d_model=32, n_head=4, block_size=16, dropout=0.0, bias=False)
    assert isinstance(attn, TriVeinAttention) and (attn.rank, attn.fold) == (4, False)
    ffn = registry.build("ffn", "vft", d_model=32, d_ff=128, dropout=0.0, bias=False)
    assert isinstance(ffn, VeinFlowFFN) and (ffn.rank, ffn.c_fc.out_features, ffn.tau) == (8, 24, 0.7)
    assert ffn.comp_in is None and ffn.stab is not None


def test_gpt_selects_the_providers_by_name() -> None:
    """model.attention: tva and model.ffn: vft build every block from the plugin; the GPT runs and trains."""
    _, registry = _plugin(rank=4)
    model = GPT(tiny_config(model={"attention": "tva", "ffn": "vft"}).model, registry)
    attns, ffns = vein_modules(model)
    assert len(attns) == len(ffns) == 2
    assert all(isinstance(b.attn, TriVeinAttention) and isinstance(b.ffn, VeinFlowFFN) for b in model.blocks)
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx, idx)
    assert out.loss is not None and out.logits.shape == (2, 16, 256)
    out.loss.backward()
    assert all(m.vein.grad is not None for m in [*attns, *ffns])


def test_a_rank_that_does_not_fit_is_a_config_error_naming_the_key() -> None:
    """vft.rank above the head size, ffn_rank above d_model: ConfigError with the key and the limit."""
    _, registry = _plugin(rank=32)
    with pytest.raises(ConfigError, match=r"vft\.rank \(32\) exceeds the head size.*at most 16") as info:
        registry.build("attention", "tva", d_model=64, n_head=4, block_size=8)
    assert info.value.key == "vft.rank"
    _, registry = _plugin(rank=4, ffn_rank=65)
    with pytest.raises(ConfigError, match=r"vft\.ffn_rank \(65\) exceeds model\.d_model \(64\)") as info:
        registry.build("ffn", "vft", d_model=64, d_ff=256)
    assert info.value.key == "vft.ffn_rank"


def test_tau_follows_its_schedule_and_reaches_the_layers() -> None:
    """schedules.vft_tau anneals τ by step; on_step_begin hands it to every ffn:vft layer; out of [0, 1] is refused."""
    plugin, registry = _plugin(rank=4, tau=0.9)
    model = GPT(tiny_config(model={"ffn": "vft"}).model, registry)
    schedule = Schedule({"vft_tau": {"start": 0.95, "end": 0.75, "by": "step"}})
    schedule.bind(total_epochs=1, steps_per_epoch=10)
    plugin.on_step_begin(trainer=SimpleNamespace(schedule=schedule), model=model, epoch=0, step=5)
    assert plugin.tau == pytest.approx(0.85)
    assert [f.tau for f in vein_modules(model)[1]] == pytest.approx([0.85, 0.85])
    bad = Schedule({"vft_tau": {"start": 0.5, "end": 1.5, "by": "step"}})
    bad.bind(total_epochs=1, steps_per_epoch=10)
    with pytest.raises(ConfigError, match=r"schedules\.vft_tau gives tau = 1\.5"):
        plugin.on_step_begin(trainer=SimpleNamespace(schedule=bad), model=model, epoch=0, step=10)


def test_ortho_loss_term_and_its_gradient_restore_orthonormal_rows() -> None:
    """vft_ortho = weight × Σ‖VVᵀ − I‖²_F: 0 at init; after scaling a vein, descending on it alone recovers."""
    plugin, registry = _plugin(rank=4, ortho_weight=0.5)
    model = GPT(tiny_config(model={"attention": "tva", "ffn": "vft"}).model, registry)
    terms = plugin.on_compute_loss(model=model)
    assert terms is not None and terms["vft_ortho"].item() == pytest.approx(0.0, abs=1e-8)
    vein = vein_modules(model)[1][0].vein
    with torch.no_grad():
        vein.mul_(1.1)
    first = plugin.on_compute_loss(model=model)["vft_ortho"].item()
    assert first == pytest.approx(0.5 * 4 * (1.21 - 1) ** 2, rel=1e-4)
    opt = torch.optim.SGD([vein], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        plugin.on_compute_loss(model=model)["vft_ortho"].backward()
        opt.step()
    assert plugin.on_compute_loss(model=model)["vft_ortho"].item() < first / 100
    assert VFTPlugin(VFTConfig(ortho_weight=0.0)).on_compute_loss(model=model) is None


def test_metrics_are_summed_over_processes_before_the_ratios() -> None:
    """on_step_end reduces (Σε, #over τ, #tokens) with trainer.all_reduce_sum, so the means are the global batch's."""
    plugin, registry = _plugin(rank=4, ffn_rank=8, tau=0.95)
    model = GPT(tiny_config(model={"ffn": "vft"}).model, registry)
    model.train()
    model(torch.randint(0, 256, (2, 16)))
    local = [f.stats_tensor() for f in vein_modules(model)[1]]
    assert all(t is not None for t in local)
    # another process saw 32 tokens per layer, all of them at ε = 1 (over τ)
    other = torch.tensor([[32.0, 32.0, 32.0], [32.0, 32.0, 32.0]], dtype=torch.float64)
    metrics = plugin.on_step_end(trainer=SimpleNamespace(all_reduce_sum=lambda t: t + other), model=model)
    assert metrics is not None
    for i, t in enumerate(local):
        eps_sum, over, count = t.tolist()
        assert metrics[f"vft/layer{i}/eps_mean"] == pytest.approx((eps_sum + 32) / (count + 32))
        assert metrics[f"vft/layer{i}/frac_over_tau"] == pytest.approx((over + 32) / (count + 32))
    assert all(f.stats_tensor() is None for f in vein_modules(model)[1])  # read once, then reset


def test_loaded_without_its_providers_the_plugin_adds_nothing() -> None:
    """A default model (causal attention, gelu FFN) gets no loss term and no metrics from vft."""
    plugin, registry = _plugin()
    model = GPT(tiny_config().model, registry)
    assert plugin.on_compute_loss(model=model) is None
    assert plugin.on_step_end(model=model) is None


def test_apt_train_with_tva_and_vft_logs_per_layer_eps_metrics(tmp_path: Path) -> None:
    """`apt train --plugins vft`, model.attention=tva, model.ffn=vft: vft/ metrics per layer, τ annealed by step."""
    from apt.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    run_dir = tmp_path / "run"
    sets = [
        "model.attention=tva", "model.ffn=vft", "vft.rank=8", "vft.ffn_rank=16",
        "schedules.vft_tau={start: 0.9, end: 0.6, by: step}",
        "training.max_epochs=1", "training.steps_per_epoch=3", "training.val_batches=1", "training.grad_accum=2",
    ]  # fmt: skip
    argv = ["train", "--config", str(config), "--plugins", "vft", "--run-dir", str(run_dir)]
    assert main([*argv, *(arg for s in sets for arg in ("--set", s))]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [p["name"] for p in summary["plugins"]] == ["vft"] and summary["steps"] == 3
    assert summary["val_bpb"] == summary["val_bpb"]  # finite, not NaN
    steps = [r for r in _records(run_dir) if "vft/eps_mean" in r]
    assert len(steps) == 3
    for step, r in enumerate(steps):
        assert r["vft/tau"] == pytest.approx(0.9 - 0.1 * step)  # linear over the run's 3 steps
        layers = [(r[f"vft/layer{i}/eps_mean"], r[f"vft/layer{i}/frac_over_tau"]) for i in (0, 1)]
        assert all(0.0 < eps < 1.0 and 0.0 <= frac <= 1.0 for eps, frac in layers)
        # both layers see the same number of tokens, so the overall values are the layers' means
        assert r["vft/eps_mean"] == pytest.approx(sum(e for e, _ in layers) / 2)
        assert r["vft/frac_over_tau"] == pytest.approx(sum(f for _, f in layers) / 2)
        assert r["loss/vft_ortho"] >= 0.0 and r["vft/ortho_err"] < 0.1
    # the run's model comes back from its folder through the plugin's providers
    assert main(["generate", "--run", str(run_dir), "--prompt", "def ", "--max-new-tokens", "5", "--seed", "0"]) == 0


def test_a_bad_rank_on_the_command_line_exits_2_with_one_line(tmp_path: Path, capsys: Any) -> None:
    """vft.rank larger than the head size: exit status 2, one line naming vft.rank and the limit, no traceback."""
    from apt.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    argv = ["train", "--config", str(config), "--plugins", "vft", "--run-dir", str(tmp_path / "run")]
    assert main([*argv, "--set", "model.attention=tva", "--set", "vft.rank=17"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vft.rank (17)" in err[0] and "at most 16" in err[0] and "Traceback" not in err[0]
