"""Finding and parsing a module's source without running it, and the names its imports bind.

Only the top-level package is located with :func:`importlib.util.find_spec` (which executes
nothing for a top-level name); submodules are found by walking
``submodule_search_locations`` by hand. Each module is parsed with :mod:`ast`.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from apt.plugins._static._scope import _same_scope_statements
from apt.plugins._static._scope import _top_level_names


__all__ = ["_Module", "_absolute_module", "_imported_module_name", "_load_module", "_top_level_missing"]


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


def _load_module(name: str) -> _Module | None:
    """Locate and parse the source of module ``name`` without executing any module code.

    None when it is not installed, has no ``.py`` source (an extension module, a namespace
    package) or cannot be parsed.
    """
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
        return _parse(name, Path(spec.origin), spec.submodule_search_locations is not None)
    locations = list(spec.submodule_search_locations or [])
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        next_locations: list[str] = []
        for location in locations:
            package_dir = Path(location) / part
            init = package_dir / "__init__.py"
            if init.is_file():
                if last:
                    return _parse(name, init, True)
                next_locations = [str(package_dir)]
                break
            if last and (Path(location) / f"{part}.py").is_file():
                return _parse(name, Path(location) / f"{part}.py", False)
            if package_dir.is_dir():  # namespace package portion
                next_locations.append(str(package_dir))
        if not next_locations:
            return None
        locations = next_locations
    return None  # the last part was a namespace package without code


def _parse(name: str, path: Path, is_package: bool) -> _Module | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return _Module(name=name, file=path, tree=tree, is_package=is_package)


def _top_level_missing(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name.split(".")[0]) is None
    except (ImportError, ValueError):
        return True


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
