"""Small builders the kernel tests share: a plugin class from attributes, an isolated manager."""

from __future__ import annotations

from typing import Any

from apt.core import ProviderRegistry
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import PluginManager


def make(name: str, version: str = "1.0.0", **attrs: Any) -> type[Plugin]:
    """A Plugin subclass called ``name`` with these class attributes (hooks included)."""
    return type(f"P_{name}", (Plugin,), {"name": name, "version": version, **attrs})


def manager(*classes: type[Plugin]) -> PluginManager:
    """A PluginManager with its own registry and hook manager, with ``classes`` registered."""
    pm = PluginManager(registry=ProviderRegistry(), hook_manager=HookManager())
    for cls in classes:
        pm.register_plugin(cls.name or "", cls)
    return pm
