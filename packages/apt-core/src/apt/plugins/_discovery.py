"""Finding plugins: the ``apt.plugins`` entry-point group and plugin directories.

Discovery reads installed distributions' metadata only; no plugin code is imported
until :meth:`PluginEntryPoint.load` is called for a plugin that is going to load.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from dataclasses import field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from apt.errors import PluginLoadError
from apt.errors import PluginValidationError
from apt.plugins.base import Plugin


__all__ = ["ENTRY_POINT_GROUP", "PluginEntryPoint", "discover_entry_points", "load_directory", "plugin_class_from"]

ENTRY_POINT_GROUP = "apt.plugins"


@dataclass(frozen=True)
class PluginEntryPoint:
    """One advertised plugin: where it comes from, before anything is imported."""

    name: str
    value: str
    distribution: str | None = None
    version: str | None = None
    entry_point: Any = field(default=None, compare=False, repr=False)
    #: the distribution's one-line summary (its ``Summary`` metadata), read without importing
    summary: str | None = field(default=None, compare=False)

    def load(self) -> type[Plugin]:
        """Import the plugin's code and return its Plugin class (errors name the plugin)."""
        where = f" ({self.distribution} {self.version})" if self.distribution else ""
        try:
            ep = self.entry_point or metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP)
            obj = ep.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {self.name!r}{where}: importing {self.value!r} failed: {type(exc).__name__}: {exc} "
                f"(reinstall or fix the package, or turn it off with disable_plugins: [{self.name}])",
                plugin=self.name,
                distribution=self.distribution,
                version=self.version,
            ) from exc
        return plugin_class_from(obj, self.name, where)


def plugin_class_from(obj: Any, name: str, where: str = "") -> type[Plugin]:
    """The Plugin subclass an entry point refers to: the class itself, or a module holding one."""
    if isinstance(obj, type) and issubclass(obj, Plugin):
        return obj
    if isinstance(obj, ModuleType):
        found = [c for c in _plugin_classes(obj) if not inspect.isabstract(c)]
        if len(found) == 1:
            return found[0]
        what = (
            "no Plugin subclass" if not found else f"several Plugin subclasses ({', '.join(c.__name__ for c in found)})"
        )
        raise PluginValidationError(
            f"plugin {name!r}{where}: module {obj.__name__!r} has {what}; point the entry point at the class, "
            f"e.g. '{obj.__name__}:MyPlugin'",
            plugin=name,
        )
    raise PluginValidationError(
        f"plugin {name!r}{where}: the entry point refers to {obj!r}, which is not a subclass of "
        "apt.plugins.Plugin; point it at your Plugin class",
        plugin=name,
    )


def discover_entry_points(group: str = ENTRY_POINT_GROUP) -> list[PluginEntryPoint]:
    """Every entry point of ``group``, with its distribution's name and version, sorted by name."""
    found: dict[tuple[str, str | None], PluginEntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        summary = dist.metadata.get("Summary") if dist is not None else None
        key = (ep.name, dist_name)
        if key not in found:  # the same distribution seen twice on sys.path: keep the first
            found[key] = PluginEntryPoint(ep.name, ep.value, dist_name, version, ep, summary or None)
    return sorted(found.values(), key=lambda e: (e.name, e.distribution or ""))


def load_directory(path: str | Path) -> list[type[Plugin]]:
    """Import every ``*.py`` module in ``path`` (not starting with ``_``); return their Plugin classes.

    This imports code: it is what the user asked for by naming the directory.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PluginLoadError(f"plugin directory {str(folder)!r} does not exist or is not a directory")
    classes: list[type[Plugin]] = []
    for file in sorted(folder.glob("*.py")):
        if file.name.startswith("_"):
            continue
        module_name = f"apt_local_plugins.{file.stem}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise PluginLoadError(
                f"plugin module {str(file)!r} failed to import: {type(exc).__name__}: {exc}", plugin=file.stem
            ) from exc
        classes += [c for c in _plugin_classes(module) if c.__module__ == module_name]
    return classes


def _plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Plugin) and c is not Plugin]
