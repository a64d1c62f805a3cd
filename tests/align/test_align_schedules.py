"""Ramp w(t) and EMA decay schedules: exact values from the align reference note, section 4."""

from __future__ import annotations

import pytest
from apt_plugin_align import align_weight
from apt_plugin_align import ema_decay_at
from apt_plugin_align import ramp_value


@pytest.mark.parametrize(
    ("ramp", "values"),
    [
        ("sigmoid", [0.0067379, 0.0600547, 0.2865048, 0.7316156, 1.0]),
        ("linear", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("cosine", [0.0, 0.1464466, 0.5, 0.8535534, 1.0]),
        ("step", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_ramp_shapes(ramp: str, values: list[float]) -> None:
    """Each ramp at x = 0, .25, .5, .75, 1, clipped outside [0, 1]."""
    for x, expected in zip([0.0, 0.25, 0.5, 0.75, 1.0], values, strict=True):
        assert ramp_value(ramp, x) == pytest.approx(expected, abs=5e-8)  # type: ignore[arg-type]
    assert ramp_value(ramp, 7.0) == 1.0  # type: ignore[arg-type]
    assert ramp_value(ramp, -1.0) == pytest.approx(values[0], abs=5e-8)  # type: ignore[arg-type]


def test_align_weight_is_zero_before_activation_then_ramps() -> None:
    """w = 0 before the activation step, the sigmoid ramp after it, 1 after the ramp; monotone."""
    assert align_weight(5, None, 8, "sigmoid") == 0.0
    assert align_weight(9, 10, 8, "sigmoid") == 0.0
    assert align_weight(10, 10, 8, "sigmoid") == pytest.approx(0.0067379, abs=5e-8)
    assert align_weight(14, 10, 8, "sigmoid") == pytest.approx(0.2865048, abs=5e-8)
    assert align_weight(18, 10, 8, "sigmoid") == 1.0
    assert align_weight(1000, 10, 8, "sigmoid") == 1.0
    weights = [align_weight(s, 10, 8, "sigmoid") for s in range(30)]
    assert weights == sorted(weights)
    assert align_weight(10, 10, 0, "sigmoid") == 1.0  # a zero-length ramp is full weight at once


def test_unknown_ramp_is_refused() -> None:
    """An unknown ramp name raises and lists the choices."""
    with pytest.raises(ValueError, match="sigmoid, linear, cosine, step"):
        ramp_value("exp", 0.5)  # type: ignore[arg-type]


def test_mt_warmup_decay() -> None:
    """min(1 - 1/(k+1), 0.999): 0.5, 2/3, 0.9, 0.999 at k = 1, 2, 9, 999, capped after."""
    values = [ema_decay_at("mt_warmup", k, 0.999, 1.0, 0) for k in (1, 2, 9, 999, 5000)]
    assert values == pytest.approx([0.5, 2 / 3, 0.9, 0.999, 0.999], abs=1e-12)


def test_cosine_and_linear_decay() -> None:
    """Cosine 0.996 -> 0.998 -> 1.0 (DINO); linear 0.999 -> 0.99945 -> 0.9999 (data2vec); constant after."""
    assert [ema_decay_at("cosine", k, 0.996, 1.0, 100) for k in (0, 50, 100, 200)] == pytest.approx(
        [0.996, 0.998, 1.0, 1.0], abs=1e-12
    )
    assert [ema_decay_at("linear", k, 0.999, 0.9999, 10) for k in (0, 5, 10, 11)] == pytest.approx(
        [0.999, 0.99945, 0.9999, 0.9999], abs=1e-12
    )
    assert ema_decay_at("constant", 3, 0.9, 1.0, 10) == 0.9


def test_decay_outside_unit_interval_is_refused() -> None:
    """A decay outside [0, 1] raises ValueError naming the value, like PyTorch's get_ema_multi_avg_fn."""
    with pytest.raises(ValueError, match="Invalid decay value 1.5"):
        ema_decay_at("constant", 1, 1.5, 1.0, 0)
    with pytest.raises(ValueError, match="unknown EMA decay schedule 'exp'"):
        ema_decay_at("exp", 1, 0.9, 1.0, 0)  # type: ignore[arg-type]
