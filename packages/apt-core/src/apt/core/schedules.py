"""Schedules: turn plugins on at a boundary, and anneal parameters over a run.

The ``schedules:`` config section holds two sorts of entry::

    schedules:
      enable_moe_at_epoch: 2          # plugin moe runs from epoch 2 (0-based) on
      enable_align_at_step: 500       # ... or from a global step on
      disable_align_at_epoch: 4       # and stops again
      moe_capacity: {start: 2.0, end: 1.0, by: step, curve: cosine}

An annealed parameter goes from ``start`` to ``end`` between ``begin`` (default 0) and
``until`` (default: the end of the run, known once the trainer calls :meth:`Schedule.bind`)
measured in epochs or steps (``by``), along a ``linear`` or ``cosine`` curve; outside
that span it holds its end values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import ValidationError

from apt.core.config import config_error_from_validation
from apt.core.config import did_you_mean
from apt.errors import ConfigError


__all__ = ["Anneal", "Schedule"]

_TOGGLE = re.compile(r"^(enable|disable)_(?P<plugin>.+)_at_(?P<unit>epoch|step)$")


class Anneal(BaseModel):
    """One annealed parameter."""

    model_config = ConfigDict(extra="forbid")

    start: float
    end: float
    by: Literal["epoch", "step"] = "step"
    curve: Literal["linear", "cosine"] = "linear"
    begin: int = 0
    until: int | None = None

    def value(self, t: float, until: int) -> float:
        span = max(until - self.begin, 1)
        frac = min(max((t - self.begin) / span, 0.0), 1.0)
        if self.curve == "cosine":
            frac = 0.5 * (1.0 - math.cos(math.pi * frac))
        return self.start + (self.end - self.start) * frac


class Schedule:
    """Parsed ``schedules:`` section.

    >>> schedule = Schedule({"enable_moe_at_epoch": 2})
    >>> schedule.should_enable_plugin("moe", epoch=1)
    False
    """

    def __init__(self, schedules: Mapping[str, Any] | None = None) -> None:
        self.enable_at: dict[str, tuple[str, int]] = {}
        self.disable_at: dict[str, tuple[str, int]] = {}
        self.params: dict[str, Anneal] = {}
        self.total_epochs: int | None = None
        self.steps_per_epoch: int | None = None
        for key, value in dict(schedules or {}).items():
            self._parse(str(key), value)

    def _parse(self, key: str, value: Any) -> None:
        path = f"schedules.{key}"
        match = _TOGGLE.match(key)
        if match:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"config key {path!r} must be a non-negative integer, got {value!r}", key=path)
            target = self.enable_at if key.startswith("enable_") else self.disable_at
            plugin = match["plugin"]
            if plugin in target:
                other = f"schedules.{key.split('_', 1)[0]}_{plugin}_at_{target[plugin][0]}"
                raise ConfigError(
                    f"config keys {other!r} and {path!r} both schedule plugin {plugin!r}; keep one of them",
                    key=path,
                )
            target[plugin] = (match["unit"], value)
            return
        if key.startswith(("enable_", "disable_")):
            raise ConfigError(
                f"config key {path!r} is not a schedule: write enable_<plugin>_at_epoch, "
                f"enable_<plugin>_at_step, disable_<plugin>_at_epoch or disable_<plugin>_at_step",
                key=path,
            )
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"config key {path!r} must be an annealed parameter {{start, end, by, curve}} or "
                f"enable_<plugin>_at_epoch/_at_step, got {value!r}",
                key=path,
            )
        try:
            self.params[key] = Anneal(**dict(value))
        except ValidationError as exc:
            raise config_error_from_validation(exc, Anneal, prefix=path) from None

    # --- binding to a run -------------------------------------------------------------

    def bind(self, total_epochs: int, steps_per_epoch: int) -> None:
        """Tell the schedule how long the run is (for the default ``until``)."""
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch

    def check_plugins(self, known: set[str] | list[str]) -> None:
        """Reject toggles that name plugins which are not installed."""
        for kind, toggles in (("enable", self.enable_at), ("disable", self.disable_at)):
            for plugin, (unit, _) in toggles.items():
                if plugin not in known:
                    raise ConfigError(
                        f"schedules name plugin {plugin!r}{did_you_mean(plugin, known)}, which is not loaded; "
                        f"loaded plugins: {', '.join(sorted(known)) or 'none'}",
                        key=f"schedules.{kind}_{plugin}_at_{unit}",
                    )

    # --- queries ----------------------------------------------------------------------

    def is_scheduled(self, name: str) -> bool:
        return name in self.enable_at or name in self.disable_at

    def should_enable_plugin(self, name: str, epoch: int | None = None, step: int | None = None) -> bool:
        """Whether plugin ``name`` should be running at this epoch/step.

        Plugins without a schedule are always enabled. A boundary given in a unit the
        caller did not pass (``epoch`` vs ``step``) is derived from ``steps_per_epoch``
        when the schedule is bound; otherwise it counts as not reached.
        """
        on = self._reached(self.enable_at.get(name), epoch, step, default=True)
        off = self._reached(self.disable_at.get(name), epoch, step, default=False)
        return on and not off

    def _reached(self, point: tuple[str, int] | None, epoch: int | None, step: int | None, default: bool) -> bool:
        if point is None:
            return default
        unit, at = point
        if unit == "epoch":
            if epoch is None and step is not None and self.steps_per_epoch:
                epoch = step // self.steps_per_epoch
            return epoch is not None and epoch >= at
        if step is None and epoch is not None and self.steps_per_epoch:
            step = epoch * self.steps_per_epoch
        return step is not None and step >= at

    def has_param(self, name: str) -> bool:
        return name in self.params

    def get_param(self, name: str, epoch: int | None = None, step: int | None = None, default: Any = None) -> Any:
        """The annealed value of ``name`` at this epoch/step (``default`` when not scheduled)."""
        anneal = self.params.get(name)
        if anneal is None:
            if default is not None:
                return default
            raise ConfigError(
                f"no annealed parameter {name!r} in schedules{did_you_mean(name, self.params)}; "
                f"defined: {', '.join(self.params) or 'none'}",
                key=f"schedules.{name}",
            )
        t = epoch if anneal.by == "epoch" else step
        if t is None:
            raise ConfigError(f"schedules.{name} anneals by {anneal.by}; pass {anneal.by}=...", key=f"schedules.{name}")
        until = anneal.until
        if until is None:
            total = self.total_epochs if anneal.by == "epoch" else self._total_steps()
            until = total if total is not None else anneal.begin + 1
        return anneal.value(t, until)

    def _total_steps(self) -> int | None:
        if self.total_epochs is None or self.steps_per_epoch is None:
            return None
        return self.total_epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (unit, at) in self.enable_at.items():
            out[f"enable_{name}_at_{unit}"] = at
        for name, (unit, at) in self.disable_at.items():
            out[f"disable_{name}_at_{unit}"] = at
        for name, anneal in self.params.items():
            out[name] = anneal.model_dump()
        return out

    def __repr__(self) -> str:
        return f"Schedule({self.to_dict()})"
