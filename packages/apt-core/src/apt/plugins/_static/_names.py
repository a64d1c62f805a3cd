"""Resolving a module-level name to its definition, across imports, without running anything.

:class:`_Resolver` holds the modules parsed so far (each file is parsed once) and follows
``from .x import Class`` re-exports, ``Alias = Class`` assignments and ``module.Class``
attributes to the class, value or function a name stands for.
"""

from __future__ import annotations

import ast
from typing import Any

from apt.plugins._static._modules import _absolute_module
from apt.plugins._static._modules import _imported_module_name
from apt.plugins._static._modules import _load_module
from apt.plugins._static._modules import _Module
from apt.plugins._static._records import _MAX_DEPTH
from apt.plugins._static._records import _Class
from apt.plugins._static._records import _Resolved


__all__ = ["_Resolver"]


class _Resolver:
    """Locates and parses modules (each file parsed once), resolves names to definitions."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module | None] = {}

    def module(self, name: str) -> _Module | None:
        if name not in self._modules:
            self._modules[name] = _load_module(name)
        return self._modules[name]

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
                found = self.follow_value(mod, stmt.value, depth)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                found = self.follow_value(mod, stmt.value, depth) if stmt.value is not None else None
            elif isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    if (alias.asname or alias.name) == name:
                        found = self.follow_import(mod, stmt, alias.name, depth)
        return found

    def follow_value(self, mod: _Module, value: ast.expr, depth: int) -> _Resolved:
        if isinstance(value, ast.Name):  # Alias = Class  /  version = __version__
            return self.resolve(mod, value.id, depth + 1)
        if isinstance(value, ast.Attribute):  # Alias = module.Class  /  version = _version.VERSION
            resolved = self.resolve_attribute(mod, value, depth + 1)
            return resolved if resolved is not None else value
        return value

    def follow_import(self, mod: _Module, stmt: ast.ImportFrom, name: str, depth: int) -> _Resolved:
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

    def resolve_attribute(self, mod: _Module, node: ast.Attribute, depth: int) -> _Resolved:
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

    def literal(self, mod: _Module, value: ast.expr, depth: int) -> tuple[bool, Any]:
        """(readable?, value) of a literal expression, or of a module-level constant it names."""
        if isinstance(value, ast.Name):  # a module-level constant, possibly imported
            resolved = self.resolve(mod, value.id, depth + 1)
            if isinstance(resolved, ast.expr) and not isinstance(resolved, ast.Name):
                return self.literal(mod, resolved, depth + 1)
            return False, None
        try:
            return True, ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False, None
