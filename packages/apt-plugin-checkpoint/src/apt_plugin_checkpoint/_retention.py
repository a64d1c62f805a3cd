"""Which checkpoints to keep: the newest K, the best k by a metric, and the protected ones.

A pure function of the checkpoints on disk (read from their manifests), so the decision
is the same after a crash and restart as it would have been without one. Deleting only
happens after a new checkpoint is durable and ``latest`` points to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


__all__ = ["CheckpointInfo", "RetentionPolicy", "best_checkpoints", "select_for_deletion"]


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint as retention sees it."""

    name: str
    step: int
    created_unix: float = 0.0
    metric: float | None = None

    @property
    def order(self) -> tuple[int, float, str]:
        """Sort key: older first (by step, then time of writing)."""
        return (self.step, self.created_unix, self.name)


@dataclass(frozen=True)
class RetentionPolicy:
    """``keep_last`` newest (None: all), ``keep_best`` best by metric in ``mode``."""

    keep_last: int | None = 3
    keep_best: int = 1
    mode: Literal["min", "max"] = "min"


def best_checkpoints(checkpoints: Iterable[CheckpointInfo], k: int, mode: str) -> list[CheckpointInfo]:
    """The ``k`` best checkpoints by metric, best first; ties go to the newer one.

    Checkpoints without a finite metric never rank.
    """
    if k <= 0:
        return []
    ranked = [c for c in checkpoints if c.metric is not None and math.isfinite(c.metric)]
    sign = 1.0 if mode == "min" else -1.0
    # best metric first; among equal metrics the newer checkpoint first
    ranked.sort(key=lambda c: (sign * c.metric, -c.step, -c.created_unix))  # type: ignore[operator]
    return ranked[:k]


def select_for_deletion(
    checkpoints: Sequence[CheckpointInfo], policy: RetentionPolicy, protect: Iterable[str] = ()
) -> list[CheckpointInfo]:
    """The checkpoints that the policy lets go, oldest first.

    Kept: the ``keep_last`` newest, the ``keep_best`` best, and every name in ``protect``
    (the ``latest`` target, the one being written, the one the run resumed from).
    """
    if policy.keep_last is None:
        return []
    keep = set(protect)
    newest_first = sorted(checkpoints, key=lambda c: c.order, reverse=True)
    keep.update(c.name for c in newest_first[: policy.keep_last])
    keep.update(c.name for c in best_checkpoints(checkpoints, policy.keep_best, policy.mode))
    return [c for c in reversed(newest_first) if c.name not in keep]
