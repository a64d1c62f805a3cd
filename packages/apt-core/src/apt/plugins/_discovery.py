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


__all__ = ["ENTRY_POINT_GROUP", "PluginEntryPoint", "class_name", "discover_entry_points", "load_directory"]

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

    @property
    def who(self) -> str:
        """How messages name the plugin: ``plugin 'moe' (apt-plugin-moe 1.2.0)``."""
        where = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{where}"

    def load(self) -> type[Plugin]:
        """Import the plugin's code and return its Plugin class: the entry point's target, or the one
        concrete Plugin subclass of the module it names. Errors name the plugin."""
        try:
            obj = (self.entry_point or metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP)).load()
        except Exception as exc:
            raise PluginLoadError(
                f"{self.who}: importing {self.value!r} failed: {type(exc).__name__}: {exc} "
                f"(reinstall or fix the package, or turn it off with disable_plugins: [{self.name}])",
                plugin=self.name,
                distribution=self.distribution,
                version=self.version,
            ) from exc
        if isinstance(obj, type) and issubclass(obj, Plugin):
            return obj
        if not isinstance(obj, ModuleType):
            raise PluginValidationError(
                f"{self.who}: the entry point refers to {obj!r}, which is not a subclass of apt.plugins.Plugin; "
                "point it at your Plugin class",
                plugin=self.name,
            )
        found = [c for c in _plugin_classes(obj) if not inspect.isabstract(c)]
        if len(found) != 1:
            names = ", ".join(c.__name__ for c in found)
            what = f"several Plugin subclasses ({names})" if found else "no Plugin subclass"
            raise PluginValidationError(
                f"{self.who}: module {obj.__name__!r} has {what}; point the entry point at the class, "
                f"e.g. '{obj.__name__}:MyPlugin'",
                plugin=self.name,
            )
        return found[0]


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


def load_directory(path: str | Path) -> dict[str, type[Plugin]]:
    """``{name: class}`` of the Plugin classes in the ``*.py`` modules of ``path`` (not starting with
    ``_``). This imports code: it is what the user asked for by naming the directory."""
    folder = Path(path)
    if not folder.is_dir():
        raise PluginLoadError(f"plugin directory {str(folder)!r} does not exist or is not a directory")
    classes: dict[str, type[Plugin]] = {}
    for file in sorted(folder.glob("[!_]*.py")):
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
        classes |= {class_name(c): c for c in _plugin_classes(module) if c.__module__ == module_name}
    return classes


def class_name(cls: type[Plugin]) -> str:
    """The name a plugin class goes by, found without its config: the ``name`` attribute; else what an
    overridden ``get_name()`` returns (the original API's style); else its class name in lower case."""
    if cls.name:
        return str(cls.name)
    if cls.get_name is not Plugin.get_name:
        # such a get_name() returns a constant: ask an instance that skipped __init__ first
        for make in (lambda: cls.__new__(cls), lambda: cls()):
            try:
                return str(make().get_name())
            except Exception:  # noqa: BLE001 - try the next way; load() reports a real problem
                continue
    return cls.__name__.lower()


def _plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Plugin) and c is not Plugin]
