"""The records static reading produces and passes around.

:class:`StaticPluginInfo` is the result; the private classes are what the readers of
modules, class bodies and class hierarchies hand each other: a class found in a module,
the bindings of a class body, an entry of a method resolution order and a hit along it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Literal

from apt.plugins._static._modules import _Module
from apt.plugins.hookspecs import HOOK_NAMES


__all__ = [
    "METADATA_FIELDS",
    "_MAX_DEPTH",
    "_NOT_HOOKS",
    "_PLUGIN",
    "_PLUGIN_BINDS",
    "_UNREADABLE",
    "StaticPluginInfo",
    "_Binding",
    "_Body",
    "_Class",
    "_Hit",
    "_Node",
    "_NotFound",
    "_Resolved",
    "_Unreadable",
    "_copy",
]

#: The class attributes read statically, with the value :class:`~apt.plugins.Plugin` gives them.
METADATA_FIELDS: dict[str, Any] = {
    "name": None,
    "version": "0.0.0",
    "description": "",
    "requires": [],
    "conflicts": [],
    "priority": 0,
    "critical": None,
    "providers": [],
    "api_version": ">=1,<2",
}

# Methods named like hooks that are not hooks: Plugin's own schedule callbacks.
_NOT_HOOKS = frozenset({"on_enable", "on_disable"})
# Names Plugin itself binds that matter here: its metadata defaults, the getters the kernel
# calls, and a no-op method per event (overriding one makes a handler; Plugin's is none).
_PLUGIN_BINDS = frozenset({*METADATA_FIELDS, "get_name", "get_version", *HOOK_NAMES, *_NOT_HOOKS})
# How many re-exports / base classes to follow before giving up (guards against cycles).
_MAX_DEPTH = 12


@dataclass
class StaticPluginInfo:
    """What could be read about one plugin class without importing it.

    :param target: the entry point value, e.g. ``"apt_plugin_moe:MoEPlugin"``.
    :param module: the module the class is defined in (after following re-exports).
    :param qualname: the class name in that module (``None`` if not found).
    :param file: the source file of that module (``None`` if not found).
    :param metadata: ``name``, ``version`` ... (see :data:`METADATA_FIELDS`); a field listed
        in ``unknown`` has its base-class default here and must not be trusted. ``name`` and
        ``version`` are what ``get_name()`` / ``get_version()`` return.
    :param hooks: canonical event names the class has handlers for: methods named after an
        event and methods decorated with ``@hook("event")`` (aliases such as
        ``on_epoch_start`` are mapped to ``on_epoch_begin``), sorted.
    :param suspicious: methods named ``on_*`` (or decorated with ``@hook``) that match no
        event (likely misspellings).
    :param unknown: metadata fields (and ``"hooks"``) that could not be read statically.
    :param error: why nothing could be read, when the class was not found at all.
    :param missing: the entry point's top-level package is not installed at all, so
        importing it would fail too (any other ``error`` may be a limit of static reading).
    """

    target: str
    module: str | None = None
    qualname: str | None = None
    file: Path | None = None
    metadata: dict[str, Any] = field(default_factory=lambda: {k: _copy(v) for k, v in METADATA_FIELDS.items()})
    hooks: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    error: str | None = None
    missing: bool = False

    @property
    def complete(self) -> bool:
        """Whether every field was read (nothing unknown, no error)."""
        return self.error is None and not self.unknown

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible view (paths as strings)."""
        return {
            "target": self.target,
            "module": self.module,
            "qualname": self.qualname,
            "file": str(self.file) if self.file is not None else None,
            **self.metadata,
            "hooks": list(self.hooks),
            "suspicious": list(self.suspicious),
            "unknown": list(self.unknown),
            "error": self.error,
            "missing": self.missing,
        }


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


class _NotFound(Exception):
    """The module or the class could not be located statically."""


@dataclass
class _Class:
    module: str
    file: Path
    node: ast.ClassDef
    owner: _Module


class _Unreadable:
    """A class-body binding whose value cannot be read statically (``if``, ``+=``, ``:=`` ...)."""

    def __repr__(self) -> str:
        return "<unreadable>"


_UNREADABLE = _Unreadable()

#: What a name is bound to in a class body: a value expression, a method, or unreadable.
_Binding = ast.expr | ast.FunctionDef | ast.AsyncFunctionDef | _Unreadable
#: What a module-level name resolves to: a class, a value, a function, or nothing readable.
_Resolved = _Class | ast.expr | ast.FunctionDef | ast.AsyncFunctionDef | None


@dataclass
class _Body:
    """The final bindings of a class body, as executing it would leave them."""

    bindings: dict[str, _Binding]
    #: a function that may be an ``@hook`` handler is bound where it cannot be read
    hooks_unknown: bool = False


@dataclass(eq=False)
class _Node:
    """One entry of a method resolution order.

    ``class``: a class read from source; ``plugin``: apt's ``Plugin`` (its defaults);
    ``opaque``: a known class that defines nothing read here (``abc.ABC``);
    ``unresolved``: a base class that cannot be read (anything may be defined there).
    """

    kind: Literal["class", "plugin", "opaque", "unresolved"]
    label: str
    cls: _Class | None = None
    #: the dotted name an unresolved or opaque base was imported as, if known
    dotted: str | None = None
    #: ``metaclass=abc.ABCMeta`` given in the class statement
    abc_meta: bool = False


@dataclass
class _Hit:
    """Where a name is found along an MRO."""

    index: int
    node: _Node
    binding: _Binding | None  # None: Plugin's own (default) binding, or an unresolved base


_PLUGIN = _Node("plugin", "Plugin")
