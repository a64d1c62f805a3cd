"""Which checkpoints to keep: the newest K (written last), the best k by a metric, and the protected ones.

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
    def order(self) -> tuple[float, int, str]:
        """Sort key: older first, by time of writing, then step, then name.

        "Newest" means written last, not highest step: after a resume from an older checkpoint
        into the same folder, the resumed run's checkpoints are newer than the abandoned run's
        later steps. Checkpoints without a time of writing (``created_unix`` 0, from manifests
        that lack it) count as older than any with one and are ordered by step among themselves.
        """
        return (self.created_unix, self.step, self.name)


@dataclass(frozen=True)
class RetentionPolicy:
    """``keep_last`` newest (None: all), ``keep_best`` best by metric in ``mode``."""

    keep_last: int | None = 3
    keep_best: int = 1
    mode: Literal["min", "max"] = "min"


def best_checkpoints(checkpoints: Iterable[CheckpointInfo], k: int, mode: str) -> list[CheckpointInfo]:
    """The ``k`` best checkpoints by metric, best first; ties go to the newer one (see ``order``).

    Checkpoints without a finite metric never rank.
    """
    if k <= 0:
        return []
    ranked = [c for c in checkpoints if c.metric is not None and math.isfinite(c.metric)]
    sign = 1.0 if mode == "min" else -1.0
    ranked.sort(key=lambda c: c.order, reverse=True)  # newest first: the stable sort below keeps it for ties
    ranked.sort(key=lambda c: sign * c.metric)  # type: ignore[operator]
    return ranked[:k]


def select_for_deletion(
    checkpoints: Sequence[CheckpointInfo], policy: RetentionPolicy, protect: Iterable[str] = ()
) -> list[CheckpointInfo]:
    """The checkpoints that the policy lets go, oldest (first written) first.

    Kept: the ``keep_last`` newest (written last, see :attr:`CheckpointInfo.order`), the
    ``keep_best`` best, and every name in ``protect`` (the ``latest`` target, the one being
    written, the one the run resumed from).
    """
    if policy.keep_last is None:
        return []
    keep = set(protect)
    newest_first = sorted(checkpoints, key=lambda c: c.order, reverse=True)
    keep.update(c.name for c in newest_first[: policy.keep_last])
    keep.update(c.name for c in best_checkpoints(checkpoints, policy.keep_best, policy.mode))
    return [c for c in reversed(newest_first) if c.name not in keep]
