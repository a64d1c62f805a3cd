"""Read a plugin's metadata from its source code without importing it.

``apt plugins list`` must not run plugin code (an installed distribution's import can do
anything, and it would drag torch in). A plugin's metadata is plain class attributes
(see :class:`~apt.plugins.Plugin`), so it can be read from the syntax tree instead:

1. the entry point value ``pkg.mod:Class`` names a module; only the top-level package is
   located with :func:`importlib.util.find_spec` (which executes nothing for a top-level
   name), and the submodules are found by walking ``submodule_search_locations`` by hand;
2. the module is parsed with :mod:`ast`; the class is found there, following
   ``from .x import Class`` re-exports and ``Alias = Class`` assignments;
3. literal class attributes are read with :func:`ast.literal_eval`, looking through base
   classes that can themselves be resolved statically, down to ``Plugin``.

Whatever cannot be read this way (a computed value, a base class from an extension
module) is reported in :attr:`StaticPluginInfo.unknown` instead of guessed.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES


__all__ = ["METADATA_FIELDS", "StaticPluginInfo", "read_static_metadata"]

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
        in ``unknown`` has its base-class default here and must not be trusted.
    :param hooks: canonical event names of the hook methods the class defines (aliases
        such as ``on_epoch_start`` are mapped to ``on_epoch_begin``), sorted.
    :param suspicious: methods named ``on_*`` that match no event (likely misspellings).
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


def read_static_metadata(target: str) -> StaticPluginInfo:
    """Read the metadata of the plugin class named by an entry point value, without importing it.

    :param target: ``"package.module:ClassName"`` (or ``"package.module"`` when the module
        defines exactly one plugin class).
    :returns: a :class:`StaticPluginInfo`; never raises for a missing or unparsable module,
        which is reported in :attr:`StaticPluginInfo.error` instead.
    """
    info = StaticPluginInfo(target=target)
    module_name, _, attr = target.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name:
        info.error = f"entry point value {target!r} names no module; expected 'package.module:ClassName'"
        info.unknown = [*METADATA_FIELDS, "hooks"]
        return info
    reader = _Reader()
    try:
        found = reader.find_class(module_name, attr or None)
    except _NotFound as exc:
        info.error = str(exc)
        info.unknown = [*METADATA_FIELDS, "hooks"]
        info.missing = _top_level_missing(module_name)
        return info
    info.module, info.qualname, info.file = found.module, found.node.name, found.file
    reader.read_class(found, info)
    return info


# --- implementation ---------------------------------------------------------------------


class _NotFound(Exception):
    """The module or the class could not be located statically."""


@dataclass
class _Module:
    name: str
    file: Path
    tree: ast.Module
    is_package: bool


@dataclass
class _Class:
    module: str
    file: Path
    node: ast.ClassDef
    owner: _Module


class _Reader:
    """Locates and parses modules (each file parsed once), resolves names to definitions."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module | None] = {}

    # --- locating modules without running them ----------------------------------------

    def module(self, name: str) -> _Module | None:
        if name not in self._modules:
            self._modules[name] = self._load(name)
        return self._modules[name]

    def _load(self, name: str) -> _Module | None:
        parts = name.split(".")
        try:
            # A top-level name has no parent to import, so find_spec executes no module code.
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if len(parts) == 1:
            # A namespace package (origin None) has no source; an extension module cannot be parsed.
            if spec.origin is None or not spec.origin.endswith(".py"):
                return None
            return self._parse(name, Path(spec.origin), spec.submodule_search_locations is not None)
        locations = list(spec.submodule_search_locations or [])
        for i, part in enumerate(parts[1:], start=1):
            last = i == len(parts) - 1
            next_locations: list[str] = []
            for location in locations:
                package_dir = Path(location) / part
                init = package_dir / "__init__.py"
                if init.is_file():
                    if last:
                        return self._parse(name, init, True)
                    next_locations = [str(package_dir)]
                    break
                if last and (Path(location) / f"{part}.py").is_file():
                    return self._parse(name, Path(location) / f"{part}.py", False)
                if package_dir.is_dir():  # namespace package portion
                    next_locations.append(str(package_dir))
            if not next_locations:
                return None
            locations = next_locations
        return None  # the last part was a namespace package without code

    def _parse(self, name: str, path: Path, is_package: bool) -> _Module | None:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return None
        return _Module(name=name, file=path, tree=tree, is_package=is_package)

    # --- resolving names --------------------------------------------------------------

    def find_class(self, module_name: str, attr: str | None) -> _Class:
        mod = self.module(module_name)
        if mod is None:
            raise _NotFound(f"cannot locate the source of module {module_name!r} (not installed, or not a .py file)")
        if attr is None:
            classes = [n for n in mod.tree.body if isinstance(n, ast.ClassDef) and _looks_like_plugin(n)]
            if len(classes) != 1:
                raise _NotFound(
                    f"entry point names module {module_name!r} without a class, and it defines "
                    f"{len(classes)} Plugin subclasses; use 'module:ClassName'"
                )
            return _Class(mod.name, mod.file, classes[0], mod)
        head, _, rest = attr.partition(".")
        resolved = self.resolve(mod, head, 0)
        if not isinstance(resolved, _Class):
            raise _NotFound(f"cannot find class {attr!r} in module {module_name!r} ({mod.file}) by reading its source")
        if rest:  # a nested class, "Outer.Inner"
            node: ast.ClassDef | None = resolved.node
            for part in rest.split("."):
                node = (
                    next((n for n in node.body if isinstance(n, ast.ClassDef) and n.name == part), None)
                    if node
                    else None
                )
            if node is None:
                raise _NotFound(f"cannot find nested class {attr!r} in module {module_name!r}")
            resolved = _Class(resolved.module, resolved.file, node, resolved.owner)
        return resolved

    def resolve(self, mod: _Module, name: str, depth: int) -> _Class | ast.expr | None:
        """The definition bound to ``name`` at the top level of ``mod``: a class, a value expression, or None."""
        if depth > _MAX_DEPTH:
            return None
        found: _Class | ast.expr | None = None
        # The last binding at module level wins, as it would at runtime (ignoring control flow).
        for stmt in mod.tree.body:
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                found = _Class(mod.name, mod.file, stmt, mod)
            elif isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                found = self._follow_value(mod, stmt.value, depth)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                found = self._follow_value(mod, stmt.value, depth) if stmt.value is not None else None
            elif isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    if (alias.asname or alias.name) == name:
                        found = self._follow_import(mod, stmt, alias.name, depth)
        return found

    def _follow_value(self, mod: _Module, value: ast.expr, depth: int) -> _Class | ast.expr | None:
        if isinstance(value, ast.Name):  # Alias = Class  /  version = __version__
            return self.resolve(mod, value.id, depth + 1)
        return value

    def _follow_import(self, mod: _Module, stmt: ast.ImportFrom, name: str, depth: int) -> _Class | ast.expr | None:
        source = _absolute_module(mod, stmt)
        if source is None:
            return None
        target = self.module(source)
        if target is not None:
            found = self.resolve(target, name, depth + 1)
            if found is not None:
                return found
        # `from . import _plugin` imports a submodule, which is not a class or a value.
        return None

    # --- reading a class --------------------------------------------------------------

    def read_class(self, cls: _Class, info: StaticPluginInfo) -> None:
        seen_attrs: set[str] = set()
        seen_methods: set[str] = set()
        unknown: set[str] = set()
        hooks: set[str] = set()
        suspicious: set[str] = set()
        chain_complete = self._walk(cls, info, seen_attrs, seen_methods, unknown, hooks, suspicious, 0)
        if not chain_complete:
            # Some base class could not be read: every field it might define is unknown.
            unknown.update(f for f in METADATA_FIELDS if f not in seen_attrs)
            unknown.add("hooks")
        info.hooks = sorted(hooks)
        info.suspicious = sorted(suspicious)
        info.unknown = [f for f in [*METADATA_FIELDS, "hooks"] if f in unknown]

    def _walk(
        self,
        cls: _Class,
        info: StaticPluginInfo,
        seen_attrs: set[str],
        seen_methods: set[str],
        unknown: set[str],
        hooks: set[str],
        suspicious: set[str],
        depth: int,
    ) -> bool:
        """Read ``cls`` then its bases (first definition wins, like the MRO for single inheritance).

        :returns: whether the whole base chain down to ``Plugin`` was readable.
        """
        for stmt in cls.node.body:
            targets: list[tuple[str, ast.expr | None]] = []
            if isinstance(stmt, ast.Assign):
                targets = [(t.id, stmt.value) for t in stmt.targets if isinstance(t, ast.Name)]
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                targets = [(stmt.target.id, stmt.value)]
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                self._read_method(cls, stmt, info, seen_attrs, seen_methods, unknown, hooks, suspicious, depth)
            for attr, value in targets:
                if attr not in METADATA_FIELDS or attr in seen_attrs or value is None:
                    continue
                seen_attrs.add(attr)
                ok, literal = self._literal(cls.owner, value, depth)
                if ok and _valid(attr, literal):
                    info.metadata[attr] = list(literal) if isinstance(literal, tuple | list) else literal
                    unknown.discard(attr)
                else:
                    unknown.add(attr)
        if depth > _MAX_DEPTH:
            return False
        complete = True
        for base in cls.node.bases:
            if _is_plugin_root(cls.owner, base, self):
                continue
            if isinstance(base, ast.Name):
                resolved = self.resolve(cls.owner, base.id, depth + 1)
            elif isinstance(base, ast.Attribute):
                resolved = self._resolve_attribute(cls.owner, base, depth + 1)
            else:
                resolved = None
            if isinstance(resolved, _Class):
                args = (info, seen_attrs, seen_methods, unknown, hooks, suspicious, depth + 1)
                complete = self._walk(resolved, *args) and complete
            elif not (isinstance(base, ast.Name) and base.id == "object"):
                complete = False
        return complete

    def _read_method(
        self,
        cls: _Class,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        info: StaticPluginInfo,
        seen_attrs: set[str],
        seen_methods: set[str],
        unknown: set[str],
        hooks: set[str],
        suspicious: set[str],
        depth: int,
    ) -> None:
        if fn.name in seen_methods:
            return
        seen_methods.add(fn.name)
        # The original's style: `def get_name(self): return "my_plugin"`.
        if fn.name in ("get_name", "get_version"):
            attr = fn.name.removeprefix("get_")
            if attr not in seen_attrs:
                seen_attrs.add(attr)
                returned = _single_return(fn)
                ok, literal = self._literal(cls.owner, returned, depth) if returned is not None else (False, None)
                if ok and isinstance(literal, str):
                    info.metadata[attr] = literal
                    unknown.discard(attr)
                else:
                    unknown.add(attr)
            return
        if not fn.name.startswith("on_") or fn.name in _NOT_HOOKS:
            return
        canonical = ALIASES.get(fn.name, fn.name)
        if canonical in HOOK_NAMES:
            hooks.add(canonical)
        else:
            suspicious.add(fn.name)

    def _resolve_attribute(self, mod: _Module, node: ast.Attribute, depth: int) -> _Class | ast.expr | None:
        # `module.Class` where `module` was imported with `import pkg.module as module` or `from pkg import module`.
        if not isinstance(node.value, ast.Name):
            return None
        module_name = _imported_module_name(mod, node.value.id)
        target = self.module(module_name) if module_name else None
        return self.resolve(target, node.attr, depth) if target is not None else None

    def _literal(self, mod: _Module, value: ast.expr, depth: int) -> tuple[bool, Any]:
        if isinstance(value, ast.Name):  # a module-level constant, possibly imported
            resolved = self.resolve(mod, value.id, depth + 1)
            if isinstance(resolved, ast.expr) and not isinstance(resolved, ast.Name):
                return self._literal(mod, resolved, depth + 1)
            return False, None
        try:
            return True, ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False, None


def _top_level_missing(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name.split(".")[0]) is None
    except (ImportError, ValueError):
        return True


def _valid(attr: str, value: Any) -> bool:
    """Whether a literal has the type the Plugin contract gives the attribute."""
    if attr in ("requires", "conflicts", "providers"):
        return isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
    if attr == "priority":
        return isinstance(value, int) and not isinstance(value, bool)
    if attr == "critical":
        return value is None or isinstance(value, bool)
    if attr == "name":
        return value is None or isinstance(value, str)
    return isinstance(value, str)


def _single_return(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.expr | None:
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]  # docstring
    if len(body) == 1 and isinstance(body[0], ast.Return):
        return body[0].value
    return None


def _absolute_module(mod: _Module, stmt: ast.ImportFrom) -> str | None:
    if stmt.level == 0:
        return stmt.module
    # Relative: level 1 is the package containing this module (the module itself if it is a package).
    package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    if stmt.level - 1 > len(package):
        return None
    base = package[: len(package) - (stmt.level - 1)]
    return ".".join([*base, *([stmt.module] if stmt.module else [])]) or None


def _imported_module_name(mod: _Module, local: str) -> str | None:
    for stmt in mod.tree.body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname == local:
                    return alias.name
                if alias.asname is None and alias.name.split(".")[0] == local:
                    return alias.name.split(".")[0]
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == local:
                    source = _absolute_module(mod, stmt)
                    return f"{source}.{alias.name}" if source else None
    return None


def _is_plugin_root(mod: _Module, base: ast.expr, reader: _Reader) -> bool:
    """Whether a base-class expression is APT's own ``Plugin`` (the end of the chain)."""
    if isinstance(base, ast.Attribute):  # plugins.Plugin, apt.plugins.Plugin
        source = _imported_module_name(mod, _root_name(base)) or ""
        return base.attr == "Plugin" and (source == "apt" or source.startswith("apt."))
    if not isinstance(base, ast.Name):
        return False
    for stmt in mod.tree.body:
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == base.id:
                    source = _absolute_module(mod, stmt) or ""
                    return alias.name == "Plugin" and (source == "apt" or source.startswith("apt.plugins"))
        if isinstance(stmt, ast.ClassDef) and stmt.name == base.id:
            return False
    return False


def _root_name(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _looks_like_plugin(node: ast.ClassDef) -> bool:
    return any(
        (isinstance(b, ast.Name) and b.id.endswith("Plugin")) or (isinstance(b, ast.Attribute) and b.attr == "Plugin")
        for b in node.bases
    )
