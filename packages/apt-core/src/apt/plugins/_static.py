"""Read a plugin's metadata from its source code without importing it.

``apt plugins list`` must not run plugin code (an installed distribution's import can do
anything, and it would drag torch in). A plugin's metadata is plain class attributes
(see :class:`~apt.plugins.Plugin`), so it can be read from the syntax tree instead:

1. the entry point value ``pkg.mod:Class`` names a module; only the top-level package is
   located with :func:`importlib.util.find_spec` (which executes nothing for a top-level
   name), and the submodules are found by walking ``submodule_search_locations`` by hand;
2. the module is parsed with :mod:`ast`; the class is found there, following
   ``from .x import Class`` re-exports and ``Alias = Class`` assignments (for a value
   without ``:Class``, the class is chosen as :func:`~apt.plugins._discovery.plugin_class_from`
   chooses it at runtime: the one concrete Plugin subclass the module holds);
3. the class bodies are read as Python executes them (the last binding of a name wins;
   ``a, b = 1, 2`` binds both), and attributes are looked up along the class's method
   resolution order (C3, as Python computes it), with :class:`~apt.plugins.Plugin`'s
   defaults at Plugin's place in it. ``get_name()`` / ``get_version()`` overrides win over
   the ``name`` / ``version`` attributes, as they do for the kernel. Handlers are methods
   named after an event and methods decorated with ``@hook("event")``.

Whatever cannot be read this way (a computed value, a name bound under an ``if``, a base
class from an extension module) is reported in :attr:`StaticPluginInfo.unknown` instead
of guessed.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Literal

from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import HookEvents


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
# Names Plugin itself binds that matter here: its metadata defaults, the getters the kernel
# calls, and a no-op method per event (overriding one makes a handler; Plugin's is none).
_PLUGIN_BINDS = frozenset({*METADATA_FIELDS, "get_name", "get_version", *HOOK_NAMES, *_NOT_HOOKS})
# The getter the kernel calls for a field, which a subclass may override.
_GETTERS = {"name": "get_name", "version": "get_version"}
# How many re-exports / base classes to follow before giving up (guards against cycles).
_MAX_DEPTH = 12
# Where apt's own `hook` decorator and `HookEvents` constants live.
_HOOK_DECORATORS = frozenset({"apt.plugins.hook", "apt.plugins.hooks.hook"})
_HOOK_EVENTS = frozenset({"apt.plugins.HookEvents", "apt.plugins.hookspecs.HookEvents"})
# Base classes known to define nothing read here (they carry no metadata and no handlers).
_OPAQUE_BASES = frozenset({"abc.ABC", "typing.Generic", "typing_extensions.Generic"})
_ABC_META = frozenset({"abc.ABCMeta"})
_ABSTRACT_DECORATORS = frozenset(
    {"abc.abstractmethod", "abc.abstractproperty", "abc.abstractclassmethod", "abc.abstractstaticmethod"}
)
# The last parts of those names: a re-export is followed only for a name ending in one of them.
_HOOK_NAMES = frozenset({"hook", "HookEvents"})
_OPAQUE_NAMES = frozenset(d.rpartition(".")[2] for d in _OPAQUE_BASES)
_ABC_META_NAMES = frozenset({"ABCMeta"})
_ABSTRACT_NAMES = frozenset(d.rpartition(".")[2] for d in _ABSTRACT_DECORATORS)
_PLUGIN_NAMES = frozenset({"Plugin"})


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


def read_static_metadata(target: str) -> StaticPluginInfo:
    """Read the metadata of the plugin class named by an entry point value, without importing it.

    :param target: ``"package.module:ClassName"``, or ``"package.module"`` when the module
        holds exactly one concrete Plugin subclass (chosen as the runtime chooses it; when
        reading the source cannot tell which class that is, nothing is guessed: ``error``).
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
    _imports: dict[str, str] | None = None
    _stars: list[str] | None = None

    def imports(self) -> dict[str, str]:
        """Top-level names bound by imports (and not rebound later) -> the dotted name they stand for.

        ``import a.b`` binds ``a`` -> ``"a"``; ``import a.b as x`` binds ``x`` -> ``"a.b"``;
        ``from m import n as k`` binds ``k`` -> ``"m.n"`` (relative imports made absolute).
        """
        if self._imports is None:
            imports: dict[str, str] = {}
            stars: list[str] = []
            for stmt in self.tree.body:
                # `try: from apt.plugins import hook / except ImportError: ...` most likely binds
                # the import: imports under if / try count, other names bound there do not
                found = [s for s in _same_scope_statements(stmt) if isinstance(s, ast.Import | ast.ImportFrom)]
                here: dict[str, str | None] = {}
                for imp in found:
                    if isinstance(imp, ast.Import):
                        for alias in imp.names:
                            local = alias.asname or alias.name.split(".")[0]
                            here[local] = alias.name if alias.asname else local
                    else:
                        source = _absolute_module(self, imp)
                        for alias in imp.names:
                            if alias.name == "*":
                                stars.append(source or "")
                            else:
                                here[alias.asname or alias.name] = f"{source}.{alias.name}" if source else None
                for name in _top_level_names(stmt):
                    if name not in here:
                        imports.pop(name, None)  # rebound by a definition: no longer the import
                for name, dotted in here.items():
                    if dotted is None:
                        imports.pop(name, None)
                    else:
                        imports[name] = dotted
            self._imports, self._stars = imports, stars
        return self._imports

    def stars(self) -> list[str]:
        """The modules this module star-imports from."""
        self.imports()
        assert self._stars is not None
        return self._stars


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


class _Reader:
    """Locates and parses modules (each file parsed once), resolves names to definitions."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module | None] = {}
        self._bodies: dict[int, _Body] = {}
        self._nodes: dict[Any, _Node] = {}
        self._bases: dict[int, list[_Node]] = {}
        self._mros: dict[int, list[_Node] | None] = {}
        self._abstracts: dict[int, set[str] | None] = {}

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
            return self._only_plugin_class(mod)
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

    def resolve(self, mod: _Module, name: str, depth: int) -> _Resolved:
        """The definition bound to ``name`` at the top level of ``mod``.

        A class, a value expression, a function, or None (not found, or a module).
        """
        if depth > _MAX_DEPTH:
            return None
        found: _Resolved = None
        # The last binding at module level wins, as it would at runtime (ignoring control flow).
        for stmt in mod.tree.body:
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                found = _Class(mod.name, mod.file, stmt, mod)
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name == name:
                found = stmt
            elif isinstance(stmt, ast.Import) and any((a.asname or a.name.split(".")[0]) == name for a in stmt.names):
                found = None  # a module
            elif isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                found = self._follow_value(mod, stmt.value, depth)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                found = self._follow_value(mod, stmt.value, depth) if stmt.value is not None else None
            elif isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    if (alias.asname or alias.name) == name:
                        found = self._follow_import(mod, stmt, alias.name, depth)
        return found

    def _follow_value(self, mod: _Module, value: ast.expr, depth: int) -> _Resolved:
        if isinstance(value, ast.Name):  # Alias = Class  /  version = __version__
            return self.resolve(mod, value.id, depth + 1)
        if isinstance(value, ast.Attribute):  # Alias = module.Class  /  version = _version.VERSION
            resolved = self._resolve_attribute(mod, value, depth + 1)
            return resolved if resolved is not None else value
        return value

    def _follow_import(self, mod: _Module, stmt: ast.ImportFrom, name: str, depth: int) -> _Resolved:
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

    def _resolve_attribute(self, mod: _Module, node: ast.Attribute, depth: int) -> _Resolved:
        # `module.Class` where `module` was imported with `import pkg.module as module` or `from pkg import module`.
        if not isinstance(node.value, ast.Name):
            return None
        module_name = _imported_module_name(mod, node.value.id)
        target = self.module(module_name) if module_name else None
        return self.resolve(target, node.attr, depth) if target is not None else None

    def dotted(self, mod: _Module, expr: ast.expr, wanted: frozenset[str]) -> str | None:
        """The dotted name an imported name (or ``module.attr`` chain) stands for.

        ``on`` after ``from apt.plugins import hook as on`` is ``"apt.plugins.hook"``. When the
        last part is one of ``wanted`` (the names the caller looks for), a re-export by
        another module (``from ._compat import hook``) is followed to where that module
        imports it from; other names are not followed, so that no module is parsed for them.
        None for a name that is not imported.
        """
        parts: list[str] = []
        while isinstance(expr, ast.Attribute):
            parts.append(expr.attr)
            expr = expr.value
        if not isinstance(expr, ast.Name):
            return None
        head = mod.imports().get(expr.id)
        if head is None:
            # `from apt.plugins import *` binds apt's names without naming them
            if any(s == "apt.plugins" for s in mod.stars()) and expr.id in ("Plugin", "hook", "HookEvents"):
                head = f"apt.plugins.{expr.id}"
            else:
                return None
        dotted = ".".join([head, *reversed(parts)])
        return self._follow_reexport(dotted, 0) if dotted.rpartition(".")[2] in wanted else dotted

    def _follow_reexport(self, dotted: str, depth: int) -> str:
        module_name, _, name = dotted.rpartition(".")
        top = dotted.split(".")[0]
        # apt's own names and the standard library's are known by their import path
        if not module_name or depth > _MAX_DEPTH or top in ("apt", "abc", "typing", "typing_extensions"):
            return dotted
        source = self.module(module_name)
        if source is None or name not in source.imports():
            return dotted
        return self._follow_reexport(source.imports()[name], depth + 1)

    # --- class bodies, bases and the MRO ----------------------------------------------

    def body(self, cls: _Class) -> _Body:
        """The bindings executing ``cls``'s body would leave (cached)."""
        key = id(cls.node)
        if key not in self._bodies:
            self._bodies[key] = _read_body(cls.node)
        return self._bodies[key]

    def node_for(self, cls: _Class) -> _Node:
        """The MRO node of a class read from source (apt's own ``Plugin`` is the ``plugin`` node)."""
        if cls.module == "apt.plugins.base" and cls.node.name == "Plugin":
            return _PLUGIN
        key = ("class", id(cls.node))
        if key not in self._nodes:
            abc_meta = any(
                k.arg == "metaclass" and self.dotted(cls.owner, k.value, _ABC_META_NAMES) in _ABC_META
                for k in cls.node.keywords
            )
            self._nodes[key] = _Node("class", cls.node.name, cls=cls, abc_meta=abc_meta)
        return self._nodes[key]

    def bases(self, node: _Node) -> list[_Node]:
        """The direct bases of a node, each resolved to a node (``object`` left out)."""
        if node.cls is None:
            return []
        key = id(node.cls.node)
        if key not in self._bases:
            self._bases[key] = [b for b in (self._base_node(node.cls, e) for e in node.cls.node.bases) if b is not None]
        return self._bases[key]

    def _base_node(self, cls: _Class, base: ast.expr) -> _Node | None:
        mod = cls.owner
        if _is_plugin_root(mod, base, self):
            return _PLUGIN
        expr = base.value if isinstance(base, ast.Subscript) else base  # Generic[T], Base[int]
        dotted = self.dotted(mod, expr, _OPAQUE_NAMES)
        if dotted is not None and dotted in _OPAQUE_BASES:
            return self._shared_node("opaque", dotted)
        if (
            isinstance(expr, ast.Name)
            and expr.id == "object"
            and dotted is None
            and self.resolve(mod, "object", 0) is None
        ):
            return None  # every MRO ends in object, which defines nothing read here
        resolved: _Resolved = None
        if isinstance(expr, ast.Name):
            resolved = self.resolve(mod, expr.id, 1)
        elif isinstance(expr, ast.Attribute):
            resolved = self._resolve_attribute(mod, expr, 1)
        if isinstance(resolved, _Class):
            return self.node_for(resolved)
        label = dotted or ast.unparse(expr)
        return self._shared_node("unresolved", dotted or f"{mod.name}:{label}", label=label)

    def _shared_node(self, kind: Literal["opaque", "unresolved"], key: str, label: str | None = None) -> _Node:
        if (kind, key) not in self._nodes:
            dotted = key if ":" not in key else None
            self._nodes[(kind, key)] = _Node(kind, label or key, dotted=dotted)
        return self._nodes[(kind, key)]

    def mro(self, node: _Node, depth: int = 0) -> list[_Node] | None:
        """The C3 linearisation of ``node`` (as ``type.mro()``), or None if Python would refuse it.

        Nodes that are not classes read from source have no known bases: an unresolved base
        appears once, at the place C3 gives it; what it may hide is judged by :meth:`certain_prefix`.
        """
        if node.cls is None:
            return [node]
        key = id(node.cls.node)
        if key in self._mros:
            return self._mros[key]
        if depth > _MAX_DEPTH:
            return None
        self._mros[key] = None  # a class that is its own base (a cycle) has no MRO
        bases = self.bases(node)
        linearised = [self.mro(b, depth + 1) for b in bases]
        result: list[_Node] | None = None
        if all(lin is not None for lin in linearised):
            merged = _c3_merge([*(lin for lin in linearised if lin is not None), list(bases)])
            result = [node, *merged] if merged is not None else None
        self._mros[key] = result
        return result

    def certain_prefix(self, mro: list[_Node]) -> int:
        """How many leading MRO entries keep their place whatever the unresolved bases hide.

        An unresolved base may have bases of its own, which C3 would interleave with the
        known classes. A class certainly precedes it only when Python's rules force that
        (it is a subclass of it, or listed before it in some base list, transitively). The
        entries before the first one not forced so are certain; a lookup that ends beyond
        them is not trusted.
        """
        unresolved = [n for n in mro if n.kind == "unresolved"]
        if not unresolved:
            return len(mro)
        edges: dict[int, set[int]] = {id(n): set() for n in mro}
        for n in mro:
            bases = self.bases(n)
            for b in bases:
                edges[id(n)].add(id(b))
            for earlier, later in zip(bases, bases[1:], strict=False):
                edges[id(earlier)].add(id(later))

        def reaches(start: _Node, goal: _Node) -> bool:
            seen, stack = {id(start)}, [id(start)]
            while stack:
                for nxt in edges.get(stack.pop(), ()):
                    if nxt == id(goal):
                        return True
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            return False

        count = 0
        for n in mro:
            if n.kind == "unresolved" or not all(reaches(n, u) for u in unresolved):
                break
            count += 1
        return count

    def lookup(self, mro: list[_Node], name: str, *, skip_unresolved: bool = False) -> _Hit | None:
        """The first MRO entry that binds ``name`` (an unresolved base might bind anything)."""
        for i, node in enumerate(mro):
            if node.kind == "plugin" and name in _PLUGIN_BINDS:
                return _Hit(i, node, None)
            if node.kind == "unresolved" and not skip_unresolved:
                return _Hit(i, node, None)
            if node.cls is not None:
                binding = self.body(node.cls).bindings.get(name)
                if binding is not None:
                    return _Hit(i, node, binding)
        return None

    # --- reading a class --------------------------------------------------------------

    def read_class(self, cls: _Class, info: StaticPluginInfo) -> None:
        """Fill ``info`` with what ``cls`` (with its bases) gives each field, in MRO order."""
        mro = self.mro(self.node_for(cls))
        if mro is None:
            # Python would refuse the class (inconsistent bases, a cycle): nothing can be trusted.
            info.unknown = [*METADATA_FIELDS, "hooks"]
            return
        certain = self.certain_prefix(mro)
        unknown: set[str] = set()
        for attr in METADATA_FIELDS:
            ok, value = self._field(mro, certain, attr)
            if ok:
                info.metadata[attr] = list(value) if isinstance(value, tuple | list) else value
            else:
                unknown.add(attr)
        hooks, suspicious, hooks_unknown = self._hooks(mro)
        if hooks_unknown:
            unknown.add("hooks")
        info.hooks = sorted(hooks)
        info.suspicious = sorted(suspicious)
        info.unknown = [f for f in [*METADATA_FIELDS, "hooks"] if f in unknown]

    def _field(self, mro: list[_Node], certain: int, attr: str) -> tuple[bool, Any]:
        """(readable?, value) of one metadata field, as the kernel would see it."""
        getter = _GETTERS.get(attr)
        if getter is not None:
            # An unresolved base is assumed not to override get_name()/get_version(): the
            # class's own attribute is the evidence then (and a rare override would show in --check).
            hit = self.lookup(mro, getter, skip_unresolved=True)
            if hit is not None and hit.node.kind == "class":
                assert hit.node.cls is not None
                return self._getter_value(mro, certain, attr, hit.node.cls, hit.binding)
        return self._attribute_value(mro, certain, attr)

    def _attribute_value(self, mro: list[_Node], certain: int, attr: str) -> tuple[bool, Any]:
        hit = self.lookup(mro, attr)
        if hit is None:  # not a Plugin subclass at all: the defaults stand
            return True, _copy(METADATA_FIELDS[attr])
        if hit.index >= certain or hit.node.kind == "unresolved":
            return False, None
        if hit.node.kind == "plugin":
            return True, _copy(METADATA_FIELDS[attr])
        if not isinstance(hit.binding, ast.expr):  # a method, or bound where it cannot be read
            return False, None
        assert hit.node.cls is not None
        ok, literal = self._literal(hit.node.cls.owner, hit.binding, 0)
        return (True, literal) if ok and _valid(attr, literal) else (False, None)

    def _getter_value(
        self, mro: list[_Node], certain: int, attr: str, owner: _Class, binding: _Binding | None
    ) -> tuple[bool, Any]:
        # The original's style: `def get_name(self): return "my_plugin"`.
        if not isinstance(binding, ast.FunctionDef):  # a coroutine, a value, unreadable: not a readable name
            return False, None
        returned = _single_return(binding)
        if returned is None:
            return False, None
        if _is_own_attribute(returned, attr):  # `return self.version` / `type(self).version`
            return self._attribute_value(mro, certain, attr)
        ok, literal = self._literal(owner.owner, returned, 0)
        return (True, literal) if ok and isinstance(literal, str) else (False, None)

    def _hooks(self, mro: list[_Node]) -> tuple[set[str], set[str], bool]:
        """(events handled, misspelt handler names, whether more may hide) along the MRO.

        The method that wins a name is the one the kernel finds with ``getattr(cls, name)``:
        it is a handler when named after an event (and not Plugin's no-op), and for every
        ``@hook("event")`` it carries; a method it overrides contributes nothing.
        """
        hooks: set[str] = set()
        suspicious: set[str] = set()
        hooks_unknown = False
        names: set[str] = {*HOOK_NAMES, *ALIASES}
        for node in mro:
            if node.kind == "unresolved":
                hooks_unknown = True  # it may define @hook methods under any name
            elif node.cls is not None:
                body = self.body(node.cls)
                hooks_unknown = hooks_unknown or body.hooks_unknown
                names.update(body.bindings)
        for name in sorted(names):
            hit = self.lookup(mro, name, skip_unresolved=True)
            if hit is None or hit.node.cls is None:
                continue
            binding = hit.binding
            is_event_name = name.startswith("on_") and name not in _NOT_HOOKS
            if isinstance(binding, _Unreadable):
                hooks_unknown = hooks_unknown or is_event_name
            elif isinstance(binding, ast.FunctionDef | ast.AsyncFunctionDef):
                if is_event_name:
                    canonical = ALIASES.get(name, name)
                    if canonical in HOOK_NAMES:
                        hooks.add(canonical)
                    else:
                        suspicious.add(name)
                for event in self._hook_marks(hit.node.cls.owner, binding):
                    if event is None:
                        hooks_unknown = True
                    elif ALIASES.get(event, event) in HOOK_NAMES:
                        hooks.add(ALIASES.get(event, event))
                    else:
                        suspicious.add(name)  # @hook("on_stepp_end") fails when the module is imported
            elif is_event_name and not (isinstance(binding, ast.Constant) and binding.value is None):
                # `on_epoch_start = on_epoch_begin`: the attribute is a handler too
                canonical = ALIASES.get(name, name)
                if canonical in HOOK_NAMES:
                    hooks.add(canonical)
        return hooks, suspicious, hooks_unknown

    def _hook_marks(self, mod: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[str | None]:
        """The event of each ``@hook(...)`` decorator of ``fn`` (None where it cannot be read)."""
        for dec in fn.decorator_list:
            if not isinstance(dec, ast.Call) or self.dotted(mod, dec.func, _HOOK_NAMES) not in _HOOK_DECORATORS:
                continue
            arg = dec.args[0] if dec.args else next((k.value for k in dec.keywords if k.arg == "event"), None)
            if arg is None or isinstance(arg, ast.Starred):
                yield None
                continue
            ok, literal = self._literal(mod, arg, 0)
            if not ok and isinstance(arg, ast.Attribute) and self.dotted(mod, arg.value, _HOOK_NAMES) in _HOOK_EVENTS:
                literal = getattr(HookEvents, arg.attr, None)  # @hook(HookEvents.ON_STEP_END)
                ok = isinstance(literal, str)
            yield literal if ok and isinstance(literal, str) else None

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

    # --- a module-only entry point ----------------------------------------------------

    def _only_plugin_class(self, mod: _Module) -> _Class:
        """The class the runtime picks for an entry point naming just ``mod``.

        :func:`~apt.plugins._discovery.plugin_class_from` takes every value of the module's
        namespace that is a Plugin subclass (not Plugin itself) and not abstract
        (:func:`inspect.isabstract`), and needs exactly one. Here: each top-level binding is
        resolved to a class where possible; a class is a plugin when its MRO reaches Plugin,
        and abstract when ABCMeta leaves it abstract methods. A binding whose nature reading
        cannot settle makes the choice ambiguous, and nothing is guessed.
        """
        definite: list[tuple[str, _Class]] = []
        maybe: list[str] = []
        for name, verdict, cls in self._namespace_classes(mod):
            if verdict == "plugin" and cls is not None:
                definite.append((name, cls))
            elif verdict == "maybe":
                maybe.append(name)
        where = f"entry point names module {mod.name!r} without a class, and"
        if len(definite) >= 2 or (not definite and not maybe):
            found = f" ({', '.join(n for n, _ in definite)})" if definite else ""
            raise _NotFound(f"{where} it defines {len(definite)} Plugin subclasses{found}; use 'module:ClassName'")
        if not maybe:
            return definite[0][1]
        raise _NotFound(
            f"{where} reading its source cannot tell which class is its plugin "
            f"({', '.join([*(n for n, _ in definite), *maybe])}: bases or bindings not readable statically); "
            "use 'module:ClassName'"
        )

    def _namespace_classes(
        self, mod: _Module
    ) -> Iterator[tuple[str, Literal["plugin", "not", "maybe"], _Class | None]]:
        """Each top-level name of ``mod`` with whether its value is a concrete Plugin subclass."""
        top = mod.name.split(".")[0]
        final: dict[str, tuple[str, Any]] = {}
        for stmt in mod.tree.body:
            if isinstance(stmt, ast.ClassDef):
                final[stmt.name] = ("class", _Class(mod.name, mod.file, stmt, mod))
            elif isinstance(stmt, ast.Assign) or (isinstance(stmt, ast.AnnAssign) and stmt.value is not None):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    for name in _target_names(target):
                        final[name] = ("value", stmt.value) if isinstance(target, ast.Name) else ("other", None)
            elif isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    if alias.name == "*":
                        source = _absolute_module(mod, stmt) or ""
                        if source != "apt.plugins":  # apt.plugins exports no Plugin subclass
                            final[f"* from {source}"] = ("star", None)
                    else:
                        final[alias.asname or alias.name] = ("import", (stmt, alias.name))
            else:
                for name in _top_level_names(stmt):
                    final[name] = ("other", None)  # functions, modules: not classes
        for name, (kind, data) in final.items():
            if kind == "star":
                yield name, "maybe", None
                continue
            resolved: _Resolved = None
            if kind == "class":
                resolved = data
            elif kind == "value":
                resolved = self._follow_value(mod, data, 0)
                if isinstance(resolved, ast.Call) and _is_type_call(resolved):
                    yield name, "maybe", None  # type("X", (Plugin,), {...}) makes a class at runtime
                    continue
            elif kind == "import":
                stmt, imported = data
                source = _absolute_module(mod, stmt) or ""
                if f"{source}.{imported}".startswith("apt.") and imported == "Plugin":
                    continue  # Plugin itself does not count
                resolved = self._follow_import(mod, stmt, imported, 0)
                if resolved is None:
                    submodule = self.module(f"{source}.{imported}") is not None
                    # The plugin's own package is read in full: a name from it that cannot be
                    # read may be the plugin. Another distribution's name that cannot be read
                    # (pydantic's lazily exported classes, an extension type) is not one.
                    own = source.split(".")[0] == top
                    yield name, "maybe" if own and not submodule else "not", None
                    continue
            if isinstance(resolved, _Class):
                yield name, self._classify(resolved, top), resolved

    def _classify(self, cls: _Class, top: str) -> Literal["plugin", "not", "maybe"]:
        node = self.node_for(cls)
        if node.kind == "plugin":
            return "not"  # Plugin itself
        mro = self.mro(node)
        if mro is None:
            return "maybe"  # Python would refuse it: the import fails, whatever we pick
        unresolved = [n for n in mro if n.kind == "unresolved"]
        if any(n.kind == "plugin" for n in mro):
            if unresolved:
                return "maybe"  # an unreadable base may leave it abstract
            return "not" if self._abstract_names(node) else "plugin"
        if not unresolved:
            return "not"
        # It reaches Plugin only through a base that cannot be read: possible for a base from
        # the plugin's own package (or apt's), not for one from another distribution.
        foreign = all(u.dotted is not None and u.dotted.split(".")[0] not in (top, "apt") for u in unresolved)
        return "not" if foreign else "maybe"

    def _abstract_names(self, node: _Node) -> set[str]:
        """The abstract methods ABCMeta leaves ``node`` with (empty when it is concrete or not an ABC)."""
        return self._abstracts_of(node) or set()

    def _abstracts_of(self, node: _Node) -> set[str] | None:
        """``__abstractmethods__`` as ABCMeta computes it; None for a class ABCMeta does not make."""
        if node.kind == "opaque":
            return set() if node.dotted == "abc.ABC" else None
        if node.cls is None:
            return None
        key = id(node.cls.node)
        if key in self._abstracts:
            return self._abstracts[key]
        self._abstracts[key] = None  # guards a cycle
        bases = self.bases(node)
        base_abstracts = [self._abstracts_of(b) for b in bases]
        if not node.abc_meta and all(a is None for a in base_abstracts):
            return None
        mro = self.mro(node) or [node]
        body = self.body(node.cls)
        # what the class body binds to an abstract method, plus each inherited abstract name
        # that still resolves to an abstract method
        result = {n for n, b in body.bindings.items() if self._is_abstract_method(node.cls, b)}
        for names in base_abstracts:
            for name in names or ():
                hit = self.lookup(mro, name, skip_unresolved=True)
                if hit is not None and hit.node.cls is not None and self._is_abstract_method(hit.node.cls, hit.binding):
                    result.add(name)
        self._abstracts[key] = result
        return result

    def _is_abstract_method(self, cls: _Class, binding: _Binding | None) -> bool:
        if not isinstance(binding, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        return any(self.dotted(cls.owner, d, _ABSTRACT_NAMES) in _ABSTRACT_DECORATORS for d in binding.decorator_list)


# --- reading a class body ----------------------------------------------------------------


def _read_body(node: ast.ClassDef) -> _Body:
    """Execute a class body symbolically: each name's last binding, or unreadable.

    Plain assignments (also to tuple / list targets unpacked from a literal of the same
    length) and ``def`` bind what they say. Any other binding of a name (a tuple target
    from a non-literal, ``+=``, ``:=``, a name bound inside ``if`` / ``try`` / ``for`` /
    ``with`` / ``match``, an import) is unreadable: the field is unknown, never Plugin's
    default. ``del name`` removes the binding (the base class's value shows through).
    """
    body = _Body(bindings={})
    bindings = body.bindings
    for stmt in node.body:
        if isinstance(stmt, ast.Assign):
            _walrus(stmt.value, bindings)
            value = _class_level_value(stmt.value, bindings)
            for target in stmt.targets:
                _bind_target(target, value, bindings)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:  # `name: str` alone binds nothing
                _walrus(stmt.value, bindings)
                _bind_target(stmt.target, _class_level_value(stmt.value, bindings), bindings)
        elif isinstance(stmt, ast.AugAssign):
            _walrus(stmt.value, bindings)
            for name in _target_names(stmt.target):
                bindings[name] = _UNREADABLE
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            bindings[stmt.name] = stmt
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    bindings.pop(target.id, None)
        elif isinstance(stmt, ast.Expr):
            _walrus(stmt.value, bindings)
        else:
            # class, import, if / for / while / try / with / match ...: whatever they bind
            # depends on running them
            if not isinstance(stmt, ast.ClassDef):
                for child in _compound_defs(stmt):
                    if child.decorator_list or child.name.startswith("on_"):
                        body.hooks_unknown = True
            for name in _top_level_names(stmt):
                bindings[name] = _UNREADABLE
    return body


def _class_level_value(value: ast.expr, bindings: dict[str, _Binding]) -> ast.expr | _Unreadable:
    """A value expression, with a bare name of the class body replaced by what it is bound to."""
    if isinstance(value, ast.Name) and value.id in bindings:
        bound = bindings[value.id]
        return bound if isinstance(bound, ast.expr) else _UNREADABLE
    return value


def _bind_target(target: ast.expr, value: ast.expr | _Unreadable, bindings: dict[str, _Binding]) -> None:
    if isinstance(target, ast.Name):
        bindings[target.id] = value
    elif isinstance(target, ast.Tuple | ast.List):
        if (
            isinstance(value, ast.Tuple | ast.List)
            and len(value.elts) == len(target.elts)
            and not any(isinstance(e, ast.Starred) for e in [*target.elts, *value.elts])
        ):
            for sub_target, sub_value in zip(target.elts, value.elts, strict=True):
                _bind_target(sub_target, sub_value, bindings)
        else:
            for name in _target_names(target):
                bindings[name] = _UNREADABLE
    elif isinstance(target, ast.Starred):
        for name in _target_names(target):
            bindings[name] = _UNREADABLE
    # an attribute or subscript target binds no name of the class


def _walrus(expr: ast.expr, bindings: dict[str, _Binding]) -> None:
    """``(name := value)`` in a class-level expression binds ``name`` in the class."""
    for sub in _walk_same_scope(expr):
        if isinstance(sub, ast.NamedExpr):
            bindings[sub.target.id] = _UNREADABLE


def _walk_same_scope(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not descend into lambdas and comprehensions (scopes of their own)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if not isinstance(child, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
                stack.append(child)


def _target_names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _top_level_names(stmt: ast.stmt) -> list[str]:
    """Every name a statement binds in the scope it runs in (not in nested functions or classes)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)  # its body runs in a scope of its own
            return
        if isinstance(node, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.append(alias.asname or alias.name.split(".")[0])
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.append(node.id)
        elif isinstance(node, ast.NamedExpr):
            names.append(node.target.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            names.append(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.append(node.rest)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return names


def _same_scope_statements(stmt: ast.stmt) -> Iterator[ast.stmt]:
    """``stmt`` and the statements nested in it that run in the same scope (not in functions or classes)."""
    yield stmt
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return
    for child in ast.iter_child_nodes(stmt):
        if isinstance(child, ast.stmt):
            yield from _same_scope_statements(child)
        elif isinstance(child, ast.ExceptHandler | ast.match_case):
            for sub in child.body:
                yield from _same_scope_statements(sub)


def _compound_defs(stmt: ast.stmt) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions defined inside a compound statement (not inside other functions or classes)."""
    stack: list[ast.AST] = list(ast.iter_child_nodes(stmt))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        elif not isinstance(node, ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _c3_merge(sequences: list[list[_Node]]) -> list[_Node] | None:
    """C3's merge step: None when no consistent order exists (Python raises TypeError then)."""
    seqs = [list(s) for s in sequences if s]
    out: list[_Node] = []
    while seqs:
        for seq in seqs:
            head = seq[0]
            if not any(head in other[1:] for other in seqs):
                break
        else:
            return None
        out.append(head)
        seqs = [rest for rest in ((s[1:] if s[0] is head else s) for s in seqs) if rest]
    return out


# --- helpers -----------------------------------------------------------------------------


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


def _is_own_attribute(expr: ast.expr, attr: str) -> bool:
    """``self.<attr>``, ``type(self).<attr>`` or ``self.__class__.<attr>``."""
    if not (isinstance(expr, ast.Attribute) and expr.attr == attr):
        return False
    owner = expr.value
    if isinstance(owner, ast.Name):
        return owner.id == "self"
    if isinstance(owner, ast.Attribute):
        return owner.attr == "__class__" and isinstance(owner.value, ast.Name) and owner.value.id == "self"
    return (
        isinstance(owner, ast.Call)
        and isinstance(owner.func, ast.Name)
        and owner.func.id == "type"
        and len(owner.args) == 1
        and isinstance(owner.args[0], ast.Name)
        and owner.args[0].id == "self"
    )


def _is_type_call(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "type" and len(call.args) == 3


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
    return mod.imports().get(local)


def _is_plugin_root(mod: _Module, base: ast.expr, reader: _Reader) -> bool:
    """Whether a base-class expression is APT's own ``Plugin`` (the end of the chain)."""
    if not isinstance(base, ast.Name | ast.Attribute):
        return False
    dotted = reader.dotted(mod, base, _PLUGIN_NAMES)
    # apt.plugins.Plugin, apt.plugins.base.Plugin, plugins.Plugin after `from apt import plugins`
    return dotted is not None and dotted.split(".")[0] == "apt" and dotted.endswith(".Plugin")
