"""Core API for gradient plugins: the optimizer-step veto, on_backward, on_after_backward."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from apt.errors import PluginError
from apt.plugins import Plugin
from apt.testing import RecordingPlugin
from apt.testing import run_tiny_training


def _skipper(at: set[int]) -> type[Plugin]:
    """A plugin that vetoes the optimizer steps in ``at`` and records what it sees around them."""

    class Skipper(Plugin):
        name = "skipper"
        seen: dict[int, dict[str, Any]] = {}  # noqa: RUF012 - one class per test

        def on_before_optimizer_step(self, trainer: Any, model: Any, optimizer: Any, step: int, **kw: Any) -> None:
            weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.seen[step] = {
                "weights": weights,
                "opt": copy.deepcopy(optimizer.state_dict()),
                "sched": trainer.lr_scheduler.state_dict(),
            }
            if step in at:
                trainer.skip_optimizer_step(f"test veto at {step}")

        def on_step_begin(self, trainer: Any, model: Any, step: int, **kw: Any) -> None:
            self.seen.setdefault(-step - 1, {"weights": {n: p.detach().clone() for n, p in model.named_parameters()}})

    return Skipper


def test_a_vetoed_step_leaves_weights_optimizer_and_schedule_untouched_and_is_counted() -> None:
    """Step 2 vetoed: the weights, Adam state and LR schedule before step 3 equal those before step 2."""
    Skipper = _skipper({2})
    run = run_tiny_training(Skipper, round_trip=False)
    seen = Skipper.seen
    for name, w in seen[2]["weights"].items():
        assert torch.equal(w, seen[3]["weights"][name]), name
    assert seen[2]["sched"] == seen[3]["sched"]
    opt2, opt3 = seen[2]["opt"]["state"], seen[3]["opt"]["state"]
    assert opt2.keys() == opt3.keys()
    for k in opt2:
        for field in opt2[k]:
            assert torch.equal(torch.as_tensor(opt2[k][field]), torch.as_tensor(opt3[k][field]))
    # the neighbours do update
    assert not all(torch.equal(w, seen[2]["weights"][n]) for n, w in seen[1]["weights"].items())
    assert run.summary["skipped_steps"] == 1 and run.summary["steps"] == 8
    steps = [c["step"] for c in run.recorder.calls("on_optimizer_step")]
    assert steps == [0, 1, 3, 4, 5, 6, 7]  # no on_optimizer_step for the vetoed step
    metrics = [c["metrics"] for c in run.recorder.calls("on_step_end")]
    assert "skipped_steps" not in metrics[1]
    assert metrics[2]["skipped_steps"] == 1.0 and metrics[2]["step_skipped"] == 1.0
    assert metrics[3]["step_skipped"] == 0.0


def test_a_run_with_a_veto_resumes_exactly() -> None:
    """Stopped after the vetoed step and resumed from its state: the same losses as the whole run."""
    full = run_tiny_training(_skipper({1}), round_trip=False)

    class Halt(Plugin):
        name = "halt"

        def on_step_end(self, trainer: Any, step: int, **kw: Any) -> None:
            if step == 2:
                trainer.request_stop("test")

    part = run_tiny_training(_skipper({1}), Halt, round_trip=False)
    state = part.trainer.state_dict()
    assert state["skipped_steps"] == 1

    class Resumer(RecordingPlugin):
        resume_state = state

    resumed = run_tiny_training(
        _skipper({1}), Resumer, overrides=["training.resume=latest"], round_trip=False, record=False
    )
    tail = [c["loss"] for c in resumed.plugin_manager.get_plugin("recorder").calls("on_step_end")]
    assert tail == [c["loss"] for c in full.recorder.calls("on_step_end")][3:]
    assert resumed.summary["skipped_steps"] == 1


class PerTermBackward(Plugin):
    """Takes over the backward: one autograd.grad per named term, summed into .grad in on_after_backward."""

    name = "per_term"
    seen_terms: list[list[str]] = []  # noqa: RUF012
    order: list[str] = []  # noqa: RUF012

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.parked: list[torch.Tensor | None] = []

    def on_compute_loss(self, outputs: Any, **kw: Any) -> dict[str, torch.Tensor]:
        return {"aux": 0.1 * outputs.logits.float().pow(2).mean()}

    def on_backward(self, model: Any, loss: Any, terms: dict[str, torch.Tensor], **kw: Any) -> bool:
        self.order.append("on_backward")
        self.seen_terms.append(sorted(terms))
        assert torch.allclose(sum(terms.values()), loss)
        params = [p for p in model.parameters() if p.requires_grad]
        if not self.parked:
            self.parked = [None] * len(params)
        names = list(terms)
        for i, name in enumerate(names):
            grads = torch.autograd.grad(terms[name], params, retain_graph=i < len(names) - 1, allow_unused=True)
            for j, g in enumerate(grads):
                if g is not None:
                    self.parked[j] = g if self.parked[j] is None else self.parked[j] + g
        return True

    def on_backward_end(self, **kw: Any) -> None:
        self.order.append("on_backward_end")

    def on_after_backward(self, model: Any, **kw: Any) -> None:
        self.order.append("on_after_backward")
        for p, g in zip([p for p in model.parameters() if p.requires_grad], self.parked, strict=True):
            p.grad = g
        self.parked = []

    def on_before_optimizer_step(self, **kw: Any) -> None:
        self.order.append("on_before_optimizer_step")


class SameTermNormally(Plugin):
    name = "per_term"

    def on_compute_loss(self, outputs: Any, **kw: Any) -> dict[str, torch.Tensor]:
        return {"aux": 0.1 * outputs.logits.float().pow(2).mean()}


def test_a_plugin_taking_over_the_backward_trains_like_the_core_backward() -> None:
    """Per-term gradients parked and written in on_after_backward give the losses of loss.backward()."""
    over = run_tiny_training(PerTermBackward, overrides=["training.grad_accum=2"], round_trip=False)
    plain = run_tiny_training(SameTermNormally, overrides=["training.grad_accum=2"], round_trip=False)
    a = [c["loss"] for c in over.recorder.calls("on_step_end")]
    b = [c["loss"] for c in plain.recorder.calls("on_step_end")]
    assert a == pytest.approx(b, rel=1e-5)
    assert PerTermBackward.seen_terms[0] == ["aux", "lm"]
    one_step = PerTermBackward.order[:6]
    assert one_step == ["on_backward", "on_backward_end"] * 2 + ["on_after_backward", "on_before_optimizer_step"]
    assert over.plugin_manager.get_plugin("per_term").is_critical()


def test_on_after_backward_sees_the_gradients_before_the_core_clips_them() -> None:
    """With training.grad_clip tiny, on_after_backward sees the unclipped norm that grad_norm reports."""
    norms: list[tuple[float, float]] = []

    class Probe(Plugin):
        name = "probe"
        critical = True

        def on_after_backward(self, model: Any, **kw: Any) -> None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norms.append((float(torch.nn.utils.get_total_norm(grads)), 0.0))

        def on_before_optimizer_step(self, model: Any, grad_norm: float, **kw: Any) -> None:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            before, _ = norms[-1]
            norms[-1] = (before, float(torch.nn.utils.get_total_norm(grads)))
            assert grad_norm == pytest.approx(before, rel=1e-6)

    run_tiny_training(Probe, overrides=["training.grad_clip=0.01"], round_trip=False)
    assert len(norms) == 8
    for before, after in norms:
        assert before > 0.05 and after == pytest.approx(0.01, rel=1e-4)


def test_a_loss_term_named_lm_is_refused_when_a_plugin_owns_the_backward() -> None:
    """'lm' is the language-model loss in on_backward's terms: a plugin term of that name is a clear error."""

    class Clash(PerTermBackward):
        def on_compute_loss(self, outputs: Any, **kw: Any) -> dict[str, torch.Tensor]:
            return {"lm": outputs.logits.float().mean()}

    with pytest.raises(PluginError, match="named 'lm'"):
        run_tiny_training(Clash, round_trip=False)
