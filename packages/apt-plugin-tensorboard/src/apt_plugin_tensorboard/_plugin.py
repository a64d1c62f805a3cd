"""The ``tensorboard`` plugin: the ``logger:tensorboard`` provider and its writer.

Events are written with the ``tensorboard`` package's own writer
(:class:`tensorboard.summary.writer.event_file_writer.EventFileWriter`) as ``Summary``
protocol buffers with one simple value per metric, the format TensorBoard's
``EventAccumulator`` reads back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic import Field
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.event_pb2 import SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from apt.core import ProviderRegistry
from apt.plugins import HookManager
from apt.plugins import Plugin


__all__ = ["TensorBoardConfig", "TensorBoardLogger", "TensorBoardPlugin"]


class TensorBoardConfig(BaseModel):
    """The ``tensorboard:`` config section."""

    model_config = {"extra": "forbid"}

    dir: str = Field("tensorboard", description="Event folder; a relative path is taken under the run folder.")
    flush_secs: float = Field(10.0, gt=0, description="How often the writer flushes events to disk (seconds).")


class TensorBoardLogger:
    """Writes each record's numbers as scalars at its ``step`` (``step`` itself is the x axis).

    :param log_dir: the event folder.
    :param start_step: a resumed run's step: events past it are purged by TensorBoard (the
        ``SessionLog.START`` event with this step, as ``SummaryWriter(purge_step=...)`` writes).
    """

    def __init__(self, log_dir: Path, start_step: int = 0, flush_secs: float = 10.0) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer = EventFileWriter(str(log_dir), flush_secs=flush_secs)
        if start_step > 0:
            self._writer.add_event(Event(step=start_step, session_log=SessionLog(status=SessionLog.START)))

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        values += [  # JSON has no NaN (metrics.jsonl writes None); TensorBoard has
            Summary.Value(tag=key, simple_value=math.nan) for key, value in record.items() if value is None
        ]
        if values:
            self._writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def close(self) -> None:
        self._writer.close()


class TensorBoardPlugin(Plugin):
    """Registers ``logger:tensorboard``: the run's metrics as TensorBoard event files."""

    name = "tensorboard"
    version = "1.0.0"
    description = "TensorBoard metrics logger: event files under RUN_DIR/tensorboard/."
    providers = ("logger:tensorboard",)
    config_model = TensorBoardConfig

    config: TensorBoardConfig  # validated once (by the plugin manager, or by Plugin.__init__ from a mapping)

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        super().setup(registry, hook_manager)
        registry.register("logger", "tensorboard", self.make_logger)

    def make_logger(self, run_dir: Path, config: Any = None, start_step: int = 0) -> TensorBoardLogger:
        """The ``logger`` provider's factory: ``(run_dir, config, start_step) -> apt.train.MetricsLogger``."""
        log_dir = Path(self.config.dir).expanduser()
        if not log_dir.is_absolute():
            log_dir = Path(run_dir) / log_dir
        return TensorBoardLogger(log_dir, start_step=start_step, flush_secs=self.config.flush_secs)
