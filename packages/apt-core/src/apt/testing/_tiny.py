"""A tiny CPU configuration, a plugin that records every event, and a short real training run.

For tests of apt-core and of plugins::

    run = run_tiny_training(MyPlugin, overrides=["my_plugin.weight=0.1"])
    assert run.summary["steps"] == 8
    recorder = run.plugin_manager.get_plugin("recorder")   # always loaded
    assert recorder.names()[0] == "on_model_built"
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import ClassVar

from apt.core import APTConfig
from apt.plugins import HOOK_NAMES
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.plugins._discovery import class_name


__all__ = ["TINY_CONFIG", "RecordingPlugin", "TinyRun", "run_tiny_training", "tiny_config"]

#: A model and run small enough for a test: 2 epochs x 4 steps of a 2-layer, 32-wide GPT.
TINY_CONFIG: dict[str, Any] = {
    "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32},
    "training": {
        "max_epochs": 2, "steps_per_epoch": 4, "batch_size": 4, "warmup_steps": 2, "val_interval": 3,
        "val_batches": 2, "log_interval": 1, "device": "cpu", "seed": 1234,
    },
    "plugins": [],
}  # fmt: skip


def tiny_config(**sections: Any) -> APTConfig:
    """:data:`TINY_CONFIG` with ``sections`` merged in (``tiny_config(training={"grad_accum": 2})``)."""
    data = copy.deepcopy(TINY_CONFIG)
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return APTConfig(**data)


class RecordingPlugin(Plugin):
    """Records every event it receives, with its keyword arguments, in order.

    ``events`` is a list of ``(event, kwargs)``; :meth:`names` lists the events,
    :meth:`calls` the kwargs of one event. Set ``resume_state`` to make it answer
    ``on_resume`` with that state. It is critical: an error in it stops the run.
    """

    name = "recorder"
    version = "1.0.0"
    description = "Records every hook call (apt.testing)."
    critical = True
    #: what on_resume answers (None: no answer)
    resume_state: ClassVar[Any] = None

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        """The events received, in order."""
        return [event for event, _ in self.events]

    def calls(self, event: str) -> list[dict[str, Any]]:
        """The keyword arguments of every call of ``event``."""
        return [kwargs for name, kwargs in self.events if name == event]


def _recorder(event: str) -> Any:
    def record(self: RecordingPlugin, **kwargs: Any) -> Any:
        self.events.append((event, dict(kwargs)))
        if event == "on_resume":
            return self.resume_state
        return None

    record.__name__ = record.__qualname__ = event
    record.__doc__ = f"Record {event}."
    return record


for _event in HOOK_NAMES:
    setattr(RecordingPlugin, _event, _recorder(_event))


@dataclass
class TinyRun:
    """The outcome of :func:`run_tiny_training`."""

    trainer: Any  # apt.train.Trainer (not imported at module level: apt.testing stays light)
    summary: dict[str, Any]
    plugin_manager: PluginManager
    #: ``trainer.state_dict()`` taken after the run (this fired ``on_save_checkpoint``)
    state: dict[str, Any] | None

    @property
    def recorder(self) -> RecordingPlugin:
        plugin = self.plugin_manager.get_plugin("recorder")
        assert isinstance(plugin, RecordingPlugin)
        return plugin


def run_tiny_training(
    *plugins: type[Plugin],
    config: APTConfig | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    round_trip: bool = True,
    record: bool = True,
) -> TinyRun:
    """Train the tiny model for real with ``plugins`` (classes, each registered under its plugin name).

    With ``round_trip`` the trainer's state is then saved and loaded back
    (``on_save_checkpoint``, ``on_load_checkpoint``), so every event of a run fires;
    ``on_resume`` fires when ``training.resume`` is set and ``on_exception`` when the run fails.

    :param config: the configuration (default :func:`tiny_config`); its ``plugins`` list
        is extended with the given plugins (and the recorder).
    :param overrides: dotted ``KEY=VALUE`` overrides (``["training.grad_accum=2"]``).
    :param run_dir: where the run writes its files (none by default).
    :param record: also load a :class:`RecordingPlugin` (``run.recorder``).
    """
    from apt.train import Trainer

    config = config if config is not None else tiny_config()
    classes: list[type[Plugin]] = [*plugins, RecordingPlugin] if record else list(plugins)
    named = [(class_name(cls), cls) for cls in classes]
    config = config.with_overrides(overrides)
    config.plugins = list(dict.fromkeys([*(config.plugins or []), *(name for name, _ in named)]))
    pm = PluginManager()
    for name, cls in named:
        pm.register_plugin(name, cls)
    pm.load_from_config(config)
    trainer = Trainer(config, pm, run_dir=run_dir)
    summary = trainer.fit()
    state = None
    if round_trip:
        state = trainer.state_dict()
        trainer.load_state_dict(state)
    return TinyRun(trainer=trainer, summary=summary, plugin_manager=pm, state=state)
