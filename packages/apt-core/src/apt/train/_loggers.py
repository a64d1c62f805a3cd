"""Metric loggers: where each logged record goes, as providers of kind ``logger``.

A logger provider is a factory ``(run_dir: Path, config: APTConfig, start_step: int) ->``
:class:`MetricsLogger`; the Trainer (rank 0, with a run folder) opens the loggers when
training starts, hands every record of ``metrics.jsonl`` to each (``{"step": ...,
"epoch": ..., name: number ...}``) and closes them at the end. ``start_step`` is the
step a resumed run continues after: records past it belong to the abandoned attempt.

Core registers ``jsonl`` (``metrics.jsonl``, always on: ``apt plot`` reads it) and ``csv``
(``metrics.csv``). Plugins add others (``apt-plugin-tensorboard`` adds ``tensorboard``).
``run.loggers`` chooses: ``None`` (default) is ``jsonl`` plus every logger a loaded plugin
provides; a list is ``jsonl`` plus exactly those names.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from apt.errors import PluginError
from apt.train._disk import naming_the_file
from apt.train._metrics import MetricsWriter
from apt.train._metrics import set_aside_records_after


if TYPE_CHECKING:
    from apt.core import APTConfig
    from apt.core import ProviderRegistry


__all__ = ["CSVLogger", "JSONLLogger", "MetricsLogger", "MetricsLoggers", "open_loggers"]

log = logging.getLogger("apt.train")


@runtime_checkable
class MetricsLogger(Protocol):
    """What a ``logger`` provider's factory returns."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Take one record: ``step`` (int), ``epoch`` (int) and metrics (floats; None for NaN)."""

    def close(self) -> None:
        """Flush and release files; called once at the end of training."""


class JSONLLogger:
    """``metrics.jsonl``: one JSON object per line (what ``apt plot`` reads)."""

    def __init__(self, run_dir: Path, config: Any = None, start_step: int = 0) -> None:
        path = run_dir / "metrics.jsonl"
        if start_step > 0:  # resumed: records past the checkpoint belong to the abandoned run
            set_aside_records_after(path, start_step)
        self.path = path
        with naming_the_file(path):
            self._writer = MetricsWriter(path)

    def log(self, record: Mapping[str, Any]) -> None:
        with naming_the_file(self.path):  # a full disk: one line naming metrics.jsonl
            self._writer.write(dict(record))

    def close(self) -> None:
        self._writer.close()


class CSVLogger:
    """``metrics.csv``: one row per record, one column per metric (``step`` and ``epoch`` first).

    A metric that appears later (the first validation, a plugin enabled by a schedule)
    adds a column: the file is rewritten with the wider header, earlier rows empty there.
    """

    def __init__(self, run_dir: Path, config: Any = None, start_step: int = 0) -> None:
        self.path = run_dir / "metrics.csv"
        self._rows: list[dict[str, Any]] = []
        if start_step > 0 and self.path.is_file():  # resumed: keep the rows up to the checkpoint
            with self.path.open(newline="", encoding="utf-8") as f:
                self._rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= start_step]
        self._columns: list[str] = list(dict.fromkeys(["step", "epoch", *(k for r in self._rows for k in r)]))
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(self._rows)
        tmp.replace(self.path)

    def log(self, record: Mapping[str, Any]) -> None:
        row = {k: ("" if v is None else v) for k, v in record.items()}
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite()
            return
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow(row)

    def close(self) -> None:
        """Nothing is held open between records."""


class MetricsLoggers:
    """The run's open loggers; a logger that fails is named, closed and dropped (except ``jsonl``)."""

    def __init__(self, loggers: dict[str, MetricsLogger] | None = None) -> None:
        self.loggers: dict[str, MetricsLogger] = dict(loggers or {})

    def write(self, record: Mapping[str, Any]) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                logger.log(record)
            except Exception as exc:
                if name == "jsonl":
                    raise
                log.error("logger %r failed and is turned off for this run: %s: %s", name, type(exc).__name__, exc)
                self.loggers.pop(name)

    def close(self) -> None:
        for name, logger in self.loggers.items():
            try:
                logger.close()
            except Exception as exc:
                log.error("logger %r failed to close: %s: %s", name, type(exc).__name__, exc)
        self.loggers = {}


def open_loggers(registry: ProviderRegistry, config: APTConfig, run_dir: Path, start_step: int) -> MetricsLoggers:
    """Open ``jsonl`` and the loggers ``run.loggers`` selects (see the module docstring)."""
    available = list(registry.list_providers("logger")) if "logger" in registry.kinds() else []
    chosen = config.run.loggers
    if chosen is None:
        names = [n for n in available if registry.get_info("logger", n)["plugin"] is not None]
    else:
        unknown = [n for n in chosen if n not in available]
        if unknown:
            from apt.errors import ConfigError

            raise ConfigError(
                f"run.loggers names {', '.join(map(repr, unknown))}, which no loaded plugin or core provides; "
                f"available loggers: {', '.join(available) or 'none'} (is the plugin installed and enabled?)",
                key="run.loggers",
            )
        names = list(chosen)
    opened: dict[str, MetricsLogger] = {}
    for name in dict.fromkeys(["jsonl", *names]):
        logger = registry.build("logger", name, run_dir=run_dir, config=config, start_step=start_step)
        if not isinstance(logger, MetricsLogger):
            raise PluginError(
                f"logger provider {name!r} returned {type(logger).__name__}, which has no log(record) and close(); "
                "return an object with both (see apt.train.MetricsLogger)",
                plugin=registry.get_info("logger", name)["plugin"],
            )
        opened[name] = logger
    return MetricsLoggers(opened)
