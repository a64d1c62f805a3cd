"""The gradient plugin in real tiny training runs: exactness, non-finite policy, surgery, resume."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from apt.errors import ConfigError
from apt.errors import UsageError
from apt.plugins import Plugin
from apt.testing import RecordingPlugin
from apt.testing import run_tiny_training
from apt.testing import tiny_config
from apt_plugin_gradient import GradientPlugin


class Aux(Plugin):
    """A named loss term whose gradient conflicts with the LM loss now and then."""

    name = "aux"

    def on_compute_loss(self, outputs: Any, **kw: Any) -> dict[str, torch.Tensor]:
        return {"aux_z": 0.05 * outputs.logits.float().logsumexp(-1).pow(2).mean()}


def _run(gradient: dict[str, Any], *extra: type[Plugin], overrides: tuple[str, ...] = (), **kw: Any) -> Any:
    config = tiny_config(gradient=gradient)
    return run_tiny_training(GradientPlugin, *extra, config=config, overrides=list(overrides), **kw)


def _collect(gradient: dict[str, Any], *extra: type[Plugin], overrides: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """The run's metrics.jsonl records (one per step in the tiny config)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(gradient, *extra, overrides=overrides, round_trip=False, run_dir=Path(tmp) / "run")
        return read_records(Path(tmp) / "run")


def read_records(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_logging_under_grad_accumulation_equals_one_big_batch() -> None:
    """grad_accum 2 x batch 2 logs the norms, parameter norms and update ratios of batch 4 in one go."""
    cfg = {"log": {"every": 1}}
    accum = _collect(cfg, overrides=("training.batch_size=2", "training.grad_accum=2"))
    big = _collect(cfg, overrides=("training.batch_size=4",))
    assert len(accum) == len(big) == 8
    keys = [k for k in big[0] if k.startswith(("grad/norm", "grad/param_norm", "grad/update_ratio"))]
    assert "grad/norm/blocks.1.ffn" in keys and "grad/update_ratio/wte" in keys and "grad/param_norm/ln_f" in keys
    for a, b in zip(accum, big, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=2e-5, abs=1e-9), key


def test_per_group_norms_add_up_to_the_global_norm_and_match_the_trainer() -> None:
    seen = _collect({"log": {"every": 2, "groups": "layer"}})
    groups = [k for k in seen[1] if k.startswith("grad/norm/")]
    assert sorted(groups) == ["grad/norm/blocks.0", "grad/norm/blocks.1", "grad/norm/ln_f", "grad/norm/wpe",
                              "grad/norm/wte"]  # fmt: skip
    for record in seen:
        assert record["grad/norm"] == pytest.approx(record["grad_norm"], rel=1e-6)  # the core's pre-clip norm
    total = sum(seen[1][k] ** 2 for k in groups) ** 0.5
    assert total == pytest.approx(seen[1]["grad/norm"], rel=1e-5)
    assert not any(k.startswith("grad/norm/") for k in seen[0])  # step 0 is no logging step with every=2


class GradIsWeight(Plugin):
    """Sets every gradient to its weight right before the optimizer step."""

    name = "grad_is_weight"

    def on_before_optimizer_step(self, model: Any, **kw: Any) -> None:
        for p in model.parameters():
            p.grad = p.detach().clone()


def test_update_ratio_of_plain_sgd_with_the_gradient_set_to_the_weight_is_the_lr() -> None:
    """SGD lr 0.1 without momentum or decay, grad := W: |dW| / |W| = 0.1 in every group; param norms shrink 0.9x."""
    over = ("training.optimizer=sgd", "training.betas=[0.0,0.999]", "training.weight_decay=0", "training.lr=0.1",
            "training.warmup_steps=0", "training.lr_scheduler=constant", "training.grad_clip=null")  # fmt: skip
    seen = _collect({"log": {"every": 1}}, GradIsWeight, overrides=over)
    ratios = [v for r in seen for k, v in r.items() if k.startswith("grad/update_ratio/")]
    assert len(ratios) == 8 * 11 and ratios == pytest.approx([0.1] * len(ratios), rel=1e-5)
    assert seen[1]["grad/param_norm/wte"] == pytest.approx(0.9 * seen[0]["grad/param_norm/wte"], rel=1e-5)


class NaNInjector(Plugin):
    """Puts a NaN into one parameter's gradient on the steps in ``at`` (after the last micro-batch)."""

    name = "nan_injector"
    at: set[int] = set()  # noqa: RUF012
    param = "blocks.1.ffn.c_fc.weight"
    weights: dict[int, dict[str, torch.Tensor]] = {}  # noqa: RUF012

    def on_backward_end(self, model: Any, step: int, **kw: Any) -> None:
        if step in self.at:
            dict(model.named_parameters())[self.param].grad[0, 0] = float("nan")

    def on_step_end(self, model: Any, step: int, **kw: Any) -> None:
        self.weights[step] = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_nan_gradient_is_named_and_its_step_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """One NaN at step 2 with policy skip: the step is skipped and counted, the run goes on."""
    NaNInjector.at, NaNInjector.weights = {2}, {}
    with caplog.at_level(logging.WARNING):
        run = _run({"nonfinite": {"policy": "skip"}}, NaNInjector, round_trip=False)
    assert run.summary["steps"] == 8 and run.summary["skipped_steps"] == 1 and run.summary["stop_reason"] is None
    assert "non-finite gradient at step 2, first in parameter 'blocks.1.ffn.c_fc.weight'" in caplog.text
    for name, w in NaNInjector.weights[1].items():
        assert torch.equal(w, NaNInjector.weights[2][name]), name  # skipped: nothing moved
    assert all(torch.isfinite(w).all() for w in NaNInjector.weights[7].values())


def test_consecutive_nan_skips_stop_the_run_naming_the_parameter() -> None:
    NaNInjector.at, NaNInjector.weights = set(range(2, 8)), {}
    run = _run({"nonfinite": {"policy": "skip", "max_consecutive": 3}}, NaNInjector, round_trip=False)
    assert run.summary["steps"] == 5 and run.summary["skipped_steps"] == 3
    assert "3 optimizer steps in a row skipped" in run.summary["stop_reason"]
    assert "'blocks.1.ffn.c_fc.weight'" in run.summary["stop_reason"]
    for name, w in NaNInjector.weights[1].items():
        assert torch.equal(w, NaNInjector.weights[4][name])


def test_policy_stop_skips_and_stops_at_the_first_nan() -> None:
    NaNInjector.at, NaNInjector.weights = {1}, {}
    run = _run({"nonfinite": {"policy": "stop"}}, NaNInjector, round_trip=False)
    assert run.summary["steps"] == 2 and run.summary["skipped_steps"] == 1
    assert "policy=stop" in run.summary["stop_reason"]


def test_pcgrad_from_an_epoch_and_cosines_on_a_sampled_interval() -> None:
    """Surgery from epoch 1; before it the cosines appear every 2nd step only; then every step."""
    seen = _collect({"surgery": {"mode": "pcgrad", "start_epoch": 1, "cosine_every": 2}}, Aux)
    has_cos = ["grad/cos/lm|aux_z" in r for r in seen]
    assert has_cos == [False, True, False, True, True, True, True, True]
    for r in seen:
        if "grad/cos/lm|aux_z" in r:
            assert -1.0 <= r["grad/cos/lm|aux_z"] <= 1.0 and r["grad/term_norm/lm"] > 0


def test_pcgrad_update_is_the_projected_sum_of_the_term_gradients() -> None:
    """The gradient the optimizer gets equals PCGrad of per-term gradients taken by separate backward passes."""
    from apt_plugin_gradient import pcgrad

    captured: dict[str, Any] = {}

    class Probe(Plugin):
        name = "probe"
        priority = -100

        def on_compute_loss(self, outputs: Any, step: int, **kw: Any) -> None:
            if step == 0:
                captured["outputs"] = outputs

        def on_before_optimizer_step(self, model: Any, step: int, **kw: Any) -> None:
            if step == 0:
                captured["grad"] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    class Terms(Plugin):
        name = "terms"

        def on_backward(self, terms: dict[str, torch.Tensor], model: Any, step: int, **kw: Any) -> None:
            if step == 0:  # taken before the gradient plugin answers: autograd.grad keeps the graph
                params = list(model.parameters())
                captured["rows"] = torch.stack([
                    torch.cat([g.reshape(-1) for g in torch.autograd.grad(terms[n], params, retain_graph=True)])
                    for n in ("lm", "aux_z")
                ])  # fmt: skip

    Terms.priority = 100
    _run({"surgery": {"mode": "pcgrad"}}, Aux, Terms, Probe, overrides=("training.grad_clip=null",), round_trip=False)
    gen = torch.Generator().manual_seed(1234)  # training.seed of the tiny config
    expected = pcgrad(captured["rows"], gen).sum(0)
    torch.testing.assert_close(captured["grad"], expected, rtol=1e-5, atol=1e-7)


def test_resume_with_the_plugin_is_bitwise_exact(tmp_path: Path) -> None:
    """z-score history, noise-scale EMAs and the PCGrad generator are state: the resumed tail is identical."""
    cfg = {"log": {"every": 1}, "clip": {"mode": "zscore", "zscore_warmup": 2}, "noise_scale": {"enabled": True},
           "surgery": {"mode": "pcgrad", "cosine_every": 1}}  # fmt: skip
    over = ("training.grad_accum=2",)
    full = _run(cfg, Aux, overrides=over, round_trip=False, run_dir=tmp_path / "full")

    class Halt(Plugin):
        name = "halt"

        def on_step_end(self, trainer: Any, step: int, **kw: Any) -> None:
            if step == 4:
                trainer.request_stop("test")

    part = _run(cfg, Aux, Halt, overrides=over, round_trip=False)
    state = part.trainer.state_dict()
    assert state["plugins"]["gradient"]["state"]["noise"]["count"] == 5

    class Resumer(RecordingPlugin):
        resume_state = state

    resumed = _run(cfg, Aux, Resumer, overrides=(*over, "training.resume=latest"), round_trip=False, record=False,
                   run_dir=tmp_path / "resumed")  # fmt: skip
    tail = [c["loss"] for c in resumed.plugin_manager.get_plugin("recorder").calls("on_step_end")]
    assert tail == [c["loss"] for c in full.recorder.calls("on_step_end")][5:]
    drop = ("tokens_per_s",)
    a = [{k: v for k, v in r.items() if k not in drop} for r in read_records(tmp_path / "full")[5:]]
    b = [{k: v for k, v in r.items() if k not in drop} for r in read_records(tmp_path / "resumed")]
    assert "grad/noise_scale" in a[0] and "grad/clip_threshold" in a[0] and "grad/cos/lm|aux_z" in a[0]
    assert a == b  # every metric, the plugin's included, bit for bit
    for name, w in full.trainer.model.state_dict().items():
        assert torch.equal(w, resumed.trainer.model.state_dict()[name]), name


def test_noise_scale_with_one_micro_batch_says_why_it_is_missing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        seen = _collect({"noise_scale": {"enabled": True}})
    assert "training.grad_accum >= 2" in caplog.text
    assert not any("grad/noise_scale" in r for r in seen)
    with_accum = _collect({"noise_scale": {"enabled": True}}, overrides=("training.grad_accum=2",))
    assert all("grad/noise_scale" in r and "grad/critical_batch" in r for r in with_accum)
    assert with_accum[-1]["grad/critical_batch"] == pytest.approx(with_accum[-1]["grad/noise_scale"] / 32)


def test_autoclip_and_agc_clip_in_training() -> None:
    """AutoClip's threshold is the percentile of the norms so far; AGC reports the share of clipped rows."""
    cfg = {"log": {"every": 1}, "clip": {"mode": "autoclip", "autoclip_percentile": 50}}
    auto = _collect(cfg, overrides=("training.grad_clip=null",))
    norms = [r["grad/norm"] for r in auto]
    for k, r in enumerate(auto):
        assert r["grad/clip_threshold"] == pytest.approx(float(np.percentile(norms[: k + 1], 50)), rel=1e-12)
        assert r["grad/clipped"] == float(r["grad/norm"] > r["grad/clip_threshold"])
        assert r["grad_norm"] == pytest.approx(min(r["grad/norm"], r["grad/clip_threshold"]), rel=1e-5)
    agc = _collect(
        {"log": {"every": 1}, "clip": {"mode": "agc", "agc_lambda": 1e-4}}, overrides=("training.grad_clip=null",)
    )
    assert all(0 < r["grad/agc_clipped_units"] <= 1 for r in agc)


def test_bad_config_and_unsupported_setups_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="'gradient.clip.mode'") as info:
        GradientPlugin({"clip": {"mode": "adaptive"}})
    assert info.value.key == "gradient.clip.mode"
    plugin = GradientPlugin({"surgery": {"mode": "pcgrad"}})
    trainer = SimpleNamespace(parallelism="ddp", world_size=2, config=tiny_config())
    with pytest.raises(UsageError, match="gradient.surgery.mode='pcgrad' needs one process"):
        plugin.on_train_begin(trainer, torch.nn.Linear(2, 2))
    trainer.parallelism = "fsdp"
    with pytest.raises(UsageError, match="training.distributed=fsdp"):
        GradientPlugin().on_train_begin(trainer, torch.nn.Linear(2, 2))


def test_the_plot_provider_draws_noise_scale_and_cosines(tmp_path: Path) -> None:
    """plot:gradient (what `apt plot` calls) writes plots/gradient.png from a run's records; nothing without them."""
    from apt_plugin_gradient import plot_gradient

    cfg = {"noise_scale": {"enabled": True}, "surgery": {"cosine_every": 1}}
    run = _run(cfg, Aux, overrides=("training.grad_accum=2",), round_trip=False, run_dir=tmp_path / "run")
    assert run.plugin_manager.registry.list_providers("plot") == ["gradient"]
    records = read_records(tmp_path / "run")
    assert all("grad/noise_scale" in r and "grad/cos/lm|aux_z" in r for r in records)
    paths = plot_gradient(records, tmp_path / "run")
    assert paths == [tmp_path / "run" / "plots" / "gradient.png"] and paths[0].stat().st_size > 10_000
    assert plot_gradient([{"step": 1, "loss": 2.0}], tmp_path / "other") == []


def test_resume_through_the_checkpoint_plugin_is_bitwise_exact(tmp_path: Path) -> None:
    """The plugin's state survives apt-plugin-checkpoint's on-disk format: the resumed records are identical."""
    from apt_plugin_checkpoint import CheckpointPlugin

    cfg = tiny_config(gradient={"log": {"every": 1}, "clip": {"mode": "autoclip"}, "noise_scale": {"enabled": True}})
    over = ["training.grad_accum=2", "training.batch_size=2"]
    run_tiny_training(GradientPlugin, CheckpointPlugin, config=cfg, overrides=over, run_dir=tmp_path / "full",
                      round_trip=False, record=False)  # fmt: skip
    saved = tmp_path / "full" / "checkpoints" / "step00000004"
    assert saved.is_dir()
    run_tiny_training(GradientPlugin, CheckpointPlugin, config=cfg, overrides=[*over, f"training.resume={saved}"],
                      run_dir=tmp_path / "resumed", round_trip=False, record=False)  # fmt: skip
    a = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_records(tmp_path / "full")[4:]]
    b = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_records(tmp_path / "resumed")]
    assert len(a) == len(b) == 4 and "grad/noise_scale" in a[0] and "grad/clip_threshold" in a[0]
    assert a == b
