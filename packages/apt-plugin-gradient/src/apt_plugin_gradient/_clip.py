"""Adaptive gradient clipping: AGC (unit-wise), AutoClip (percentile of past norms), z-score (ZClip).

AutoClip and z-score decide a threshold for the global norm; :func:`scale_grads_` applies it.
Their histories are plain Python numbers, so a checkpoint restores them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


__all__ = ["AutoClip", "ZScoreClip", "agc_clip_", "scale_grads_"]


@torch.no_grad()
def agc_clip_(
    params: Iterable[tuple[Tensor, Tensor]], lam: float, eps: float, count: bool = True
) -> tuple[Tensor | None, int]:
    """Adaptive gradient clipping (Brock et al. 2021, arXiv 2102.06171), in place.

    For each unit i (a row of a weight of ``dim >= 2``, reduced over dims 1..; the whole
    tensor for vectors and scalars): if ``|G_i| / max(|W_i|, eps) > lam`` then
    ``G_i <- lam * max(|W_i|, eps) / |G_i| * G_i``.

    :param params: ``(weight, grad)`` pairs; ``grad`` is changed in place.
    :param count: also count the clipped units (two more operations per tensor).
    :returns: the number of clipped units (a 0-dim tensor, no host sync; ``None`` without
        ``count``) and the number of units.
    """
    clipped: list[Tensor] = []
    units = 0
    for w, g in params:
        dims = tuple(range(1, w.dim())) if w.dim() > 1 else None
        keep = w.dim() > 1
        w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=keep, dtype=torch.float32)  # (out, 1, ...) or ()
        g_norm = torch.linalg.vector_norm(g, dim=dims, keepdim=keep, dtype=torch.float32)
        # lam * max(|W_i|, eps) / |G_i|, capped at 1: below 1 exactly for the units to clip
        scale = w_norm.clamp_min_(eps).mul_(lam).div_(g_norm.clamp_min_(1e-12)).clamp_(max=1.0)
        g.mul_(scale.to(g.dtype))
        if count:
            clipped.append((scale < 1.0).sum())
        units += scale.numel()
    if not count:
        return None, units
    return (torch.stack(clipped).sum() if clipped else torch.zeros((), dtype=torch.long)), units


@torch.no_grad()
def scale_grads_(grads: Sequence[Tensor], coef: float) -> None:
    """Multiply every gradient by ``coef`` in place (global-norm clipping)."""
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)


class AutoClip:
    """AutoClip (Seetharaman et al. 2020, arXiv 2007.14469): clip at a percentile of the norms seen so far.

    The current norm joins the history first; the threshold is ``np.percentile(history, p)``
    (linear interpolation) over the last ``history`` norms.
    """

    def __init__(self, percentile: float, history: int) -> None:
        self.percentile = percentile
        self.size = history
        self.norms: list[float] = []  # oldest first, at most `size`

    def threshold(self, norm: float) -> float:
        """Record ``norm`` and return the clipping threshold for it."""
        self.norms.append(norm)
        if len(self.norms) > self.size:
            del self.norms[0]
        return float(np.percentile(np.asarray(self.norms, dtype=np.float64), self.percentile))

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = [float(v) for v in state["norms"]][-self.size :]


class ZScoreClip:
    """Z-score spike clipping (ZClip, Kumar et al. 2025, arXiv 2504.02507).

    The first ``warmup`` norms initialise the mean ``mu`` and variance ``var`` (population)
    and are not clipped. Afterwards ``z = (g - mu) / (sigma + 1e-6)``; when ``z > thr`` the
    norm is clipped to ``mu + thr**2 * sigma / z`` (``adaptive``) or to ``mu`` (``mean``).
    The EMAs (factor ``alpha``) are then updated with the clipped norm::

        mu  <- alpha * mu  + (1 - alpha) * g_clipped
        var <- alpha * var + (1 - alpha) * (g_clipped - mu)**2      (mu already updated)
    """

    def __init__(self, alpha: float, threshold: float, warmup: int, mode: str = "adaptive") -> None:
        self.alpha, self.z_thr, self.warmup, self.mode = alpha, threshold, warmup, mode
        self.warm: list[float] = []
        self.mean = 0.0
        self.var = 0.0
        self.ready = False

    def threshold(self, norm: float) -> float:
        """Record ``norm``; return the norm it is clipped to (``norm`` itself when it is no spike)."""
        if not self.ready:
            self.warm.append(norm)
            if len(self.warm) >= self.warmup:
                values = np.asarray(self.warm, dtype=np.float64)
                self.mean, self.var = float(values.mean()), float(values.var())
                self.warm, self.ready = [], True
            return norm
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + 1e-6)
        clipped = norm
        if z > self.z_thr:
            clipped = self.mean + self.z_thr**2 * std / z if self.mode == "adaptive" else self.mean
        self.mean = self.alpha * self.mean + (1 - self.alpha) * clipped
        self.var = self.alpha * self.var + (1 - self.alpha) * (clipped - self.mean) ** 2
        return clipped

    def state_dict(self) -> dict[str, Any]:
        return {"warm": list(self.warm), "mean": self.mean, "var": self.var, "ready": self.ready}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warm = [float(v) for v in state["warm"]]
        self.mean, self.var, self.ready = float(state["mean"]), float(state["var"]), bool(state["ready"])
