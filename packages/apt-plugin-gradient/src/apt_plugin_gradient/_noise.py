"""The simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018, arXiv 1812.06162).

From squared gradient norms measured at two batch sizes ``B_s < B_b`` (appendix A.1),
both unbiased::

    |G|^2     ~ (B_b |G_b|^2 - B_s |G_s|^2) / (B_b - B_s)
    tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (1/B_s - 1/B_b)

Their ratio is biased, so each is smoothed by its own EMA and the ratio is taken of the
smoothed values (the mean of per-step ratios overestimates it: see the reference note).
In a training step with ``A`` micro-batches on ``W`` processes, ``|G_s|^2`` is the mean of
the micro-batch gradients' squared norms (``B_s`` = tokens of one micro-batch) and
``|G_b|^2`` the squared norm of the accumulated, all-reduced gradient (``B_b = A W B_s``).
"""

from __future__ import annotations

import math
from typing import Any


__all__ = ["NoiseScale"]


class NoiseScale:
    """Bias-corrected EMAs of the unbiased ``|G|^2`` and ``tr(Sigma)`` estimates.

    >>> ns = NoiseScale(beta=0.99)
    >>> ns.update(small_sq=2.0, big_sq=1.1, b_small=128, b_big=1024)
    >>> ns.b_simple   # tr(Sigma) / |G|^2, in the units of b_small and b_big
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.g2_ema = 0.0
        self.trace_ema = 0.0
        self.count = 0

    @staticmethod
    def estimate(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
        """One step's unbiased ``(|G|^2, tr(Sigma))`` from the two batch sizes."""
        if not b_big > b_small > 0:
            raise ValueError(f"need b_big > b_small > 0, got b_small={b_small}, b_big={b_big}")
        g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
        return g2, trace

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> None:
        """Fold one step in (skip steps whose norms are not finite before calling)."""
        g2, trace = self.estimate(small_sq, big_sq, b_small, b_big)
        self.g2_ema = self.beta * self.g2_ema + (1 - self.beta) * g2
        self.trace_ema = self.beta * self.trace_ema + (1 - self.beta) * trace
        self.count += 1

    @property
    def g2(self) -> float:
        """Smoothed ``|G|^2`` (bias-corrected)."""
        return self.g2_ema / (1 - self.beta**self.count) if self.count else math.nan

    @property
    def trace(self) -> float:
        """Smoothed ``tr(Sigma)`` (bias-corrected)."""
        return self.trace_ema / (1 - self.beta**self.count) if self.count else math.nan

    @property
    def b_simple(self) -> float:
        """``tr(Sigma) / |G|^2`` of the smoothed values; NaN until ``|G|^2`` is positive."""
        g2 = self.g2
        return self.trace / g2 if g2 > 0 else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {"g2_ema": self.g2_ema, "trace_ema": self.trace_ema, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g2_ema, self.trace_ema = float(state["g2_ema"]), float(state["trace_ema"])
        self.count = int(state["count"])
