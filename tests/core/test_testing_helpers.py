"""apt.testing: run_tiny_training registers plugin classes under the names the kernel gives them."""

from __future__ import annotations

from typing import Any

from apt.plugins import Plugin
from apt.testing import run_tiny_training


class OldStyle(Plugin):
    """The original API's style: the name comes from get_name(), there is no `name` attribute."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.steps = 0

    def get_name(self) -> str:
        return "old_style"

    def on_step_end(self, **kwargs: Any) -> None:
        self.steps += 1


class Nameless(Plugin):
    """Neither a name nor get_name(): the kernel lets it take the name it is registered under."""

    def on_step_end(self, **kwargs: Any) -> None:
        pass


def test_a_get_name_style_plugin_is_registered_under_its_own_name() -> None:
    """A plugin that names itself with get_name() trains under that name (not 'None')."""
    run = run_tiny_training(OldStyle, round_trip=False, record=False)
    assert run.plugin_manager.list_loaded() == ["old_style"]
    plugin = run.plugin_manager.get_plugin("old_style")
    assert isinstance(plugin, OldStyle) and plugin.steps == 8


def test_a_nameless_plugin_gets_the_kernels_name_for_its_class() -> None:
    """Without any name, the class name (lowercase) is used, as the manager does for a plugin directory."""
    run = run_tiny_training(Nameless, round_trip=False, record=False)
    assert run.plugin_manager.list_loaded() == ["nameless"]
