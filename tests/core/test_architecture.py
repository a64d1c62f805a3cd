"""Guard tests for the architecture rules: public surfaces, import direction, lazy torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
PUBLIC_MODULES = ["apt", "apt.core", "apt.plugins", "apt.errors"]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    # "isort-style": CONSTANTS, then Classes, then functions and instances; each alphabetical
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    for name in names:
        assert hasattr(module, name), f"{module_name}.__all__ names {name!r}, which does not exist"


def test_core_never_imports_a_plugin_package() -> None:
    offenders = []
    for path in (ROOT / "packages" / "apt-core" / "src").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("apt_plugin_")]
    assert offenders == []


def test_plugins_never_import_each_other_or_core_internals() -> None:
    offenders = []
    for package in (ROOT / "packages").glob("apt-plugin-*"):
        own = "apt_plugin_" + package.name.removeprefix("apt-plugin-")
        for path in package.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    if n.startswith("apt_plugin_") and n.split(".")[0] != own:
                        offenders.append(f"{path}: imports {n}")
                    if n.startswith("apt.") and any(part.startswith("_") for part in n.split(".")):
                        offenders.append(f"{path}: imports private {n}")
    assert offenders == []


def test_kernel_and_cli_import_without_torch() -> None:
    code = (
        "import sys, apt, apt.core, apt.plugins, apt.errors, apt.cli\n"
        "from apt.plugins import plugin_manager\n"
        "plugin_manager.discover()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
