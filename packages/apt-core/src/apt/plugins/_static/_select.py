"""Finding the class an entry point value names, in the source of its module.

``pkg.mod:Class`` (or ``pkg.mod:Outer.Inner``) names the class, following re-exports and
aliases. A value without ``:Class`` names only a module: the class is then chosen as
:func:`~apt.plugins._discovery.plugin_class_from` chooses it at runtime, the one concrete
Plugin subclass the module holds, and nothing is guessed where reading cannot tell.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any
from typing import Literal

from apt.plugins._static._hierarchy import _Hierarchy
from apt.plugins._static._modules import _absolute_module
from apt.plugins._static._modules import _Module
from apt.plugins._static._records import _Class
from apt.plugins._static._records import _NotFound
from apt.plugins._static._records import _Resolved
from apt.plugins._static._scope import _target_names
from apt.plugins._static._scope import _top_level_names


__all__ = ["_find_class"]


def _find_class(hierarchy: _Hierarchy, module_name: str, attr: str | None) -> _Class:
    """The class ``module_name:attr`` names (``attr`` None: the module's only plugin class).

    :raises _NotFound: the module or the class cannot be located by reading source.
    """
    resolver = hierarchy.resolver
    mod = resolver.module(module_name)
    if mod is None:
        raise _NotFound(f"cannot locate the source of module {module_name!r} (not installed, or not a .py file)")
    if attr is None:
        return _only_plugin_class(hierarchy, mod)
    head, _, rest = attr.partition(".")
    resolved = resolver.resolve(mod, head, 0)
    if not isinstance(resolved, _Class):
        raise _NotFound(f"cannot find class {attr!r} in module {module_name!r} ({mod.file}) by reading its source")
    if rest:  # a nested class, "Outer.Inner"
        node: ast.ClassDef | None = resolved.node
        for part in rest.split("."):
            node = (
                next((n for n in node.body if isinstance(n, ast.ClassDef) and n.name == part), None) if node else None
            )
        if node is None:
            raise _NotFound(f"cannot find nested class {attr!r} in module {module_name!r}")
        resolved = _Class(resolved.module, resolved.file, node, resolved.owner)
    return resolved


def _only_plugin_class(hierarchy: _Hierarchy, mod: _Module) -> _Class:
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
    for name, verdict, cls in _namespace_classes(hierarchy, mod):
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
    hierarchy: _Hierarchy, mod: _Module
) -> Iterator[tuple[str, Literal["plugin", "not", "maybe"], _Class | None]]:
    """Each top-level name of ``mod`` with whether its value is a concrete Plugin subclass."""
    resolver = hierarchy.resolver
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
            resolved = resolver.follow_value(mod, data, 0)
            if isinstance(resolved, ast.Call) and _is_type_call(resolved):
                yield name, "maybe", None  # type("X", (Plugin,), {...}) makes a class at runtime
                continue
        elif kind == "import":
            stmt, imported = data
            source = _absolute_module(mod, stmt) or ""
            if f"{source}.{imported}".startswith("apt.") and imported == "Plugin":
                continue  # Plugin itself does not count
            resolved = resolver.follow_import(mod, stmt, imported, 0)
            if resolved is None:
                submodule = resolver.module(f"{source}.{imported}") is not None
                # The plugin's own package is read in full: a name from it that cannot be
                # read may be the plugin. Another distribution's name that cannot be read
                # (pydantic's lazily exported classes, an extension type) is not one.
                own = source.split(".")[0] == top
                yield name, "maybe" if own and not submodule else "not", None
                continue
        if isinstance(resolved, _Class):
            yield name, _classify(hierarchy, resolved, top), resolved


def _classify(hierarchy: _Hierarchy, cls: _Class, top: str) -> Literal["plugin", "not", "maybe"]:
    node = hierarchy.node_for(cls)
    if node.kind == "plugin":
        return "not"  # Plugin itself
    mro = hierarchy.mro(node)
    if mro is None:
        return "maybe"  # Python would refuse it: the import fails, whatever we pick
    unresolved = [n for n in mro if n.kind == "unresolved"]
    if any(n.kind == "plugin" for n in mro):
        if unresolved:
            return "maybe"  # an unreadable base may leave it abstract
        return "not" if hierarchy.abstract_names(node) else "plugin"
    if not unresolved:
        return "not"
    # It reaches Plugin only through a base that cannot be read: possible for a base from
    # the plugin's own package (or apt's), not for one from another distribution.
    foreign = all(u.dotted is not None and u.dotted.split(".")[0] not in (top, "apt") for u in unresolved)
    return "not" if foreign else "maybe"


def _is_type_call(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "type" and len(call.args) == 3
