"""Early stopping: stop when a validation metric has not improved for ``patience`` validations.

Configured by ``training.early_stopping`` (``monitor``, ``patience``, ``min_delta``,
``mode``; off while ``monitor`` is None). The Trainer feeds it every validation's
metrics; when it gives up, the run stops after that validation, as if a plugin had called
``trainer.request_stop``, and ``summary.json`` records the reason (``stop_reason``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from apt.errors import ConfigError


__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Counts validations without an improvement of at least ``min_delta`` in ``monitor``.

    :param config: a ``training.early_stopping`` section.
    """

    def __init__(self, config: Any) -> None:
        self.monitor: str | None = config.monitor
        self.patience: int = config.patience
        self.min_delta: float = config.min_delta
        self.mode: str = config.mode
        self.best: float | None = None
        self.bad_validations = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, metrics: Mapping[str, float]) -> str | None:
        """Take one validation's metrics; returns the stop reason when patience ran out, else None."""
        if self.monitor is None:
            return None
        if self.monitor not in metrics:
            raise ConfigError(
                f"training.early_stopping.monitor is {self.monitor!r}, which validation does not measure; "
                f"measured: {', '.join(sorted(metrics))}",
                key="training.early_stopping.monitor",
            )
        value = float(metrics[self.monitor])
        if math.isfinite(value) and self._improved(value):
            self.best, self.bad_validations = value, 0
            return None
        self.bad_validations += 1
        if self.bad_validations < self.patience:
            return None
        best = f"{self.best:.4f}" if self.best is not None else "none"
        return (
            f"early stopping: {self.monitor} did not improve by more than {self.min_delta} for "
            f"{self.bad_validations} validations (best {best})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state.get("best")
        self.best = float(best) if best is not None else None
        self.bad_validations = int(state.get("bad_validations", 0))
