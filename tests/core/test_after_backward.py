"""on_after_backward sees the step's complete, unclipped gradients; unlogged steps' plugin metrics are averaged."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from apt.plugins import Plugin
from apt.testing import run_tiny_training


def _norm(model: torch.nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads))


class GradSpy(Plugin):
    name = "spy"
    version = "1.0.0"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.unclipped: list[float] = []
        self.clipped: list[float] = []
        self.reported: list[float] = []

    def on_after_backward(self, model: Any) -> None:
        self.unclipped.append(_norm(model))

    def on_before_optimizer_step(self, model: Any, grad_norm: float) -> None:
        self.clipped.append(_norm(model))
        self.reported.append(grad_norm)


def test_the_pre_clip_hook_sees_unclipped_gradients() -> None:
    """With grad_clip far below the gradients' norm: the hook sees the norm core reports, then core clips."""
    run = run_tiny_training(GradSpy, overrides=["training.grad_clip=0.001", "training.grad_accum=2"])
    spy = run.plugin_manager.get_plugin("spy")
    assert len(spy.unclipped) == run.summary["steps"] == 8  # once per optimizer step, not per micro-batch
    assert all(u > 0.01 for u in spy.unclipped)
    assert all(math.isclose(u, r, rel_tol=1e-5) for u, r in zip(spy.unclipped, spy.reported, strict=True))
    assert all(math.isclose(c, 0.001, rel_tol=1e-3) for c in spy.clipped)


class GradZero(Plugin):
    name = "zero"
    version = "1.0.0"
    critical = True

    def on_after_backward(self, model: Any) -> None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


def test_a_change_in_the_hook_is_what_clipping_and_grad_norm_see(tmp_path: Path) -> None:
    run_tiny_training(GradZero, run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["grad_norm"] for r in records} == {0.0}


def test_the_hook_fires_after_the_last_backward_and_before_the_optimizer_step() -> None:
    run = run_tiny_training(overrides=["training.grad_accum=2", "training.max_epochs=1", "training.steps_per_epoch=1"])
    names = run.plugin_manager.get_plugin("recorder").names()  # type: ignore[attr-defined]
    step = names[names.index("on_step_begin") : names.index("on_step_end")]
    assert step[-4:] == ["on_backward_end", "on_after_backward", "on_before_optimizer_step", "on_optimizer_step"]
    assert step.count("on_backward_end") == 2 and step.count("on_after_backward") == 1


class StepCounter(Plugin):
    name = "counter"
    version = "1.0.0"

    def on_step_end(self, step: int) -> dict[str, float]:
        return {"counter/step": float(step)}


def test_unlogged_step_metrics_are_averaged_into_the_next_record(tmp_path: Path) -> None:
    """log_interval=4: the record of step 4 holds the mean of steps 0..3, that of step 8 of steps 4..7."""
    run_tiny_training(
        StepCounter, overrides=["training.log_interval=4", "training.val_interval=100"], run_dir=tmp_path / "run"
    )
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["counter/step"]) for r in records] == [(4, 1.5), (8, 5.5)]
