"""Slow hooks: a handler that takes more than ``training.slow_hook_share`` of the training time.

The hook manager times every handler. At each logged record the Trainer hands
:class:`SlowHookWatch` the statistics and the training loop's wall time since the first
step; a handler whose share exceeds the threshold is warned about once, by name, and
listed in ``summary.json`` (``slow_hooks``) and the end-of-run line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any


__all__ = ["MIN_SECONDS_PER_STEP", "SlowHookWatch"]

log = logging.getLogger("apt.train")


#: A handler must also cost at least this much per step to count as slow: on a tiny model a
#: checkpoint save of a few milliseconds is a large share of a step, and harmless.
MIN_SECONDS_PER_STEP = 0.05


class SlowHookWatch:
    """Warns once per handler whose time is more than ``share`` of the loop's wall time
    (and at least :data:`MIN_SECONDS_PER_STEP` per step)."""

    def __init__(self, share: float, min_seconds_per_step: float = MIN_SECONDS_PER_STEP) -> None:
        self.share = share
        self.min_seconds_per_step = min_seconds_per_step
        self.slow: dict[str, dict[str, Any]] = {}  # handler -> {"event", "plugin", "share", "seconds"}
        self._base: dict[tuple[str, str], float] = {}  # time spent before the loop (set-up, on_train_begin)

    def start(self, stats: Mapping[str, Any]) -> None:
        """Take the handlers' time so far as the baseline (the loop starts now)."""
        self._base = {
            (event, h["handler"]): float(h.get("total_s", 0.0))
            for event, entry in stats.items()
            for h in entry.get("handlers", [])
        }

    def check(self, stats: Mapping[str, Any], wall_s: float, steps: int) -> None:
        """Look at ``HookManager.get_stats()`` after ``steps`` steps that took ``wall_s`` seconds."""
        if wall_s <= 0 or steps <= 0:
            return
        for event, entry in stats.items():
            for h in entry.get("handlers", []):
                seconds = float(h.get("total_s", 0.0)) - self._base.get((event, h["handler"]), 0.0)
                share = seconds / wall_s
                if share <= self.share or seconds / steps < self.min_seconds_per_step:
                    continue
                name = f"{h['handler']} ({event})"
                first = name not in self.slow
                self.slow[name] = {"event": event, "plugin": h.get("plugin"), "share": share, "seconds": seconds}
                if first:
                    log.warning(
                        "hook %s takes %.0f%% of the training time (%.3f s per step, over %d steps); more than "
                        "training.slow_hook_share=%.2f. Make it cheaper, run it less often (a condition such as "
                        "every_n_steps), or disable plugin %r",
                        name, 100 * share, seconds / steps, steps, self.share, h.get("plugin"),
                    )  # fmt: skip

    def summary(self) -> list[dict[str, Any]]:
        """The slow handlers, slowest first (for ``summary.json``)."""
        rows = [{"handler": name, **info} for name, info in self.slow.items()]
        return sorted(rows, key=lambda r: -r["share"])
