"""Schedules of the align plugin: the loss weight ramp ``w(t)`` and the EMA decay ``m_k``.

Both are pure functions of counters, so they are trivially resumable: the plugin stores
the counters (activation step, number of EMA updates), never a schedule object.
"""

from __future__ import annotations

import math
from typing import Final
from typing import Literal
from typing import get_args


__all__ = ["DECAY_SCHEDULES", "RAMPS", "DecaySchedule", "Ramp", "align_weight", "ema_decay_at", "ramp_value"]

Ramp = Literal["sigmoid", "linear", "cosine", "step"]
DecaySchedule = Literal["mt_warmup", "constant", "cosine", "linear"]

RAMPS: Final[tuple[str, ...]] = get_args(Ramp)
DECAY_SCHEDULES: Final[tuple[str, ...]] = get_args(DecaySchedule)


def ramp_value(ramp: Ramp, x: float) -> float:
    """The ramp shape at progress ``x`` (clipped to ``[0, 1]``).

    - ``sigmoid``: ``exp(-5 (1 - x)^2)`` (Mean Teacher ramp-up, arXiv 1703.01780 / 1610.02242);
      note it is ``e^-5 = 0.0067379`` at ``x = 0``, not 0.
    - ``linear``: ``x``.
    - ``cosine``: ``0.5 (1 - cos(pi x))``.
    - ``step``: ``1`` everywhere.

    :raises ValueError: for an unknown ramp name.
    """
    x = min(max(x, 0.0), 1.0)
    if ramp == "sigmoid":
        return math.exp(-5.0 * (1.0 - x) ** 2)
    if ramp == "linear":
        return x
    if ramp == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * x))
    if ramp == "step":
        return 1.0
    raise ValueError(f"unknown ramp {ramp!r}; choose one of {', '.join(RAMPS)}")


def align_weight(step: int, start_step: int | None, ramp_steps: int, ramp: Ramp) -> float:
    """The alignment loss weight ``w(t)`` at optimizer step ``step``.

    :param step: the 0-based global optimizer step.
    :param start_step: the step at which the stable state was created (``None``: not yet).
    :param ramp_steps: ramp length in optimizer steps; ``0`` means full weight at once.
    :param ramp: the ramp shape (see :func:`ramp_value`).
    :returns: ``0.0`` before activation, then ``ramp((step - start_step) / ramp_steps)``.
    """
    if start_step is None or step < start_step:
        return 0.0
    if ramp_steps <= 0:  # Mean Teacher's convention: a zero-length ramp is full weight at once
        return 1.0
    return ramp_value(ramp, (step - start_step) / ramp_steps)


def ema_decay_at(schedule: DecaySchedule, k: int, decay: float, decay_end: float, total: int) -> float:
    """The EMA decay ``m_k`` used for the ``k``-th update of the stable state.

    :param schedule: ``mt_warmup`` -- ``min(1 - 1/(k + 1), decay)``, the true running mean while
        ``k`` is small (Mean Teacher, ``update_ema_variables``); ``constant`` -- ``decay``;
        ``cosine`` -- from ``decay`` up to ``decay_end`` along a half cosine over ``total``
        updates (BYOL/DINO); ``linear`` -- straight from ``decay`` to ``decay_end`` over
        ``total`` updates (data2vec), constant afterwards.
    :param k: 1-based index of the update being made (the first update after activation is ``k = 1``).
    :param decay: the base decay ``m`` (the cap for ``mt_warmup``).
    :param decay_end: the final decay of ``cosine`` and ``linear``.
    :param total: the number of updates over which ``cosine``/``linear`` anneal (``<= 0``: at once).
    :raises ValueError: for a decay outside ``[0, 1]`` or an unknown schedule name.
    """
    for name, value in (("decay", decay), ("decay_end", decay_end)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Invalid {name} value {value} provided. Please provide a value in [0,1] range.")
    if schedule == "mt_warmup":
        return min(1.0 - 1.0 / (k + 1), decay)
    if schedule == "constant":
        return decay
    progress = 1.0 if total <= 0 else min(max(k / total, 0.0), 1.0)
    if schedule == "cosine":
        return decay_end - (decay_end - decay) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return decay + (decay_end - decay) * progress
    raise ValueError(f"unknown EMA decay schedule {schedule!r}; choose one of {', '.join(DECAY_SCHEDULES)}")
