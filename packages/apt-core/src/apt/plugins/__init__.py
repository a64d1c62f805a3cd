"""The plugin kernel: the Plugin base class, hooks, the plugin manager and the trainer's view.

``from apt.plugins import Plugin, plugin_manager, hook_manager, every_n_epochs`` as in
the original project. ``plugin_manager`` and ``hook_manager`` are process-wide
instances (the plugin manager uses the global ``apt.core.registry``); construct
:class:`PluginManager` / :class:`HookManager` for isolated use in tests or embedding.
"""

from __future__ import annotations

from apt.core import registry as _registry
from apt.core.readonly import read_only
from apt.plugins._conditions import Condition
from apt.plugins._conditions import after_epoch
from apt.plugins._conditions import before_epoch
from apt.plugins._conditions import every_n_epochs
from apt.plugins._conditions import every_n_steps
from apt.plugins._discovery import ENTRY_POINT_GROUP
from apt.plugins._discovery import PluginEntryPoint
from apt.plugins._discovery import discover_entry_points
from apt.plugins._loading import AUTOLOAD_ENV
from apt.plugins._loading import autoload_disabled
from apt.plugins._loading import unselected_reason
from apt.plugins.base import PLUGIN_API_VERSION
from apt.plugins.base import Plugin
from apt.plugins.hooks import Handler
from apt.plugins.hooks import HandlerStats
from apt.plugins.hooks import HookManager
from apt.plugins.hooks import hook
from apt.plugins.hooks import hook_manager
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import HookEvents
from apt.plugins.hookspecs import hookimpl
from apt.plugins.hookspecs import hookspec
from apt.plugins.manager import PluginFailure
from apt.plugins.manager import PluginManager
from apt.plugins.manager import PluginTeardownError
from apt.plugins.view import TrainerView


__all__ = [
    "ALIASES",
    "AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "PLUGIN_API_VERSION",
    "Condition",
    "Handler",
    "HandlerStats",
    "HookEvents",
    "HookManager",
    "Plugin",
    "PluginEntryPoint",
    "PluginFailure",
    "PluginManager",
    "PluginTeardownError",
    "TrainerView",
    "after_epoch",
    "autoload_disabled",
    "before_epoch",
    "discover_entry_points",
    "every_n_epochs",
    "every_n_steps",
    "hook",
    "hook_manager",
    "hookimpl",
    "hookspec",
    "plugin_manager",
    "read_only",
    "unselected_reason",
]

#: The process-wide plugin manager (global registry, global hook manager).
plugin_manager = PluginManager(registry=_registry, hook_manager=hook_manager)
