"""``apt plugin new NAME [--dir DIR]``: scaffold a pip-installable plugin package.

The package it writes (``DIR/apt-plugin-NAME/``) is complete and its tests pass as
generated: a ``pyproject.toml`` with the ``apt.plugins`` entry point, a :class:`Plugin`
subclass with a pydantic config, a provider, a hook with checkpointed state, tests that
use :mod:`apt.testing`, and a README. The files come from ``apt/cli/_templates/``
(``*.tmpl``, with ``{{placeholders}}``).
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


__all__ = ["ScaffoldNames", "register", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Added to a generated plugin class whose name pytest would take for a test class.
_NOT_A_TEST = (
    '\n    # The class name starts with "Test": this tells pytest it is not a test class.\n    __test__ = False\n'
)


@dataclass(frozen=True)
class ScaffoldNames:
    """The names derived from a plugin name (``"token_dropout"``)."""

    name: str  #: plugin name, entry-point name and config section: ``token_dropout``
    dist: str  #: distribution: ``apt-plugin-token-dropout``
    package: str  #: import package: ``apt_plugin_token_dropout``
    cls: str  #: plugin class: ``TokenDropoutPlugin``
    title: str  #: human title: ``Token dropout``

    @classmethod
    def from_name(cls, raw: str) -> ScaffoldNames:
        """Validate and normalise ``raw`` (``Token-Dropout`` → ``token_dropout``).

        :raises UsageError: for a name that cannot be a plugin name.
        """
        from apt.core import APTConfig
        from apt.errors import UsageError

        name = raw.strip().lower().replace("-", "_")
        for prefix in ("apt_plugin_",):
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix) :]  # `apt plugin new apt-plugin-foo` means plugin "foo"
        if not _NAME.match(name) or name.endswith("_"):
            raise UsageError(
                f"plugin name {raw!r} is not valid: use lowercase letters, digits and underscores, starting "
                "with a letter (e.g. 'token_dropout'); it becomes the config section and entry-point name"
            )
        if keyword.iskeyword(name):
            raise UsageError(f"plugin name {raw!r} is a Python keyword; choose another name")
        if name in APTConfig.core_sections():
            raise UsageError(
                f"plugin name {raw!r} is a core config section ({', '.join(APTConfig.core_sections())}); "
                "a plugin's name is its config section, so choose another name"
            )
        words = name.split("_")
        camel = "".join(w.capitalize() for w in words if w)
        return cls(
            name=name,
            dist="apt-plugin-" + name.replace("_", "-"),
            package="apt_plugin_" + name,
            cls=camel if camel.endswith("Plugin") else camel + "Plugin",
            title=" ".join(words).capitalize(),
        )


def register(subparsers: Any) -> None:
    """Add ``apt plugin new`` to the ``apt`` parser."""
    parser = subparsers.add_parser(
        "plugin", help="create a new plugin package", description="Create a new APT plugin package."
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", parser_class=type(parser))
    p = sub.add_parser(
        "new",
        help="scaffold a pip-installable plugin package (its tests pass as generated)",
        description="Write DIR/apt-plugin-NAME/: pyproject with the apt.plugins entry point, a Plugin subclass "
        "with a pydantic config, a provider, a hook, tests using apt.testing, and a README.",
    )
    p.add_argument("name", help="the plugin name, e.g. token_dropout (its config section and entry-point name)")
    p.add_argument("--dir", default=".", help="the folder to create the package in (default: the current one)")
    p.set_defaults(func=cmd_new)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_new(args: argparse.Namespace) -> int:
    """``apt plugin new NAME [--dir DIR]``."""
    from apt.plugins import discover_entry_points

    names = ScaffoldNames.from_name(args.name)
    project = scaffold(names, Path(args.dir))
    taken = [ep for ep in discover_entry_points() if ep.name == names.name]
    for ep in taken:
        print(
            f"warning: plugin name {names.name!r} is already used by the installed distribution "
            f"{ep.distribution} {ep.version}; installing both would make the name ambiguous",
            file=sys.stderr,
        )
    print(f"created {names.dist} (plugin {names.name!r}, class {names.cls}) in {project}")
    print("next:")
    print(f"  cd {project}")
    print('  pip install -e ".[test]"   # installs it: `apt plugins list` now shows it')
    print("  pytest                     # its tests pass as generated")
    return 0


def scaffold(names: ScaffoldNames, parent: Path) -> Path:
    """Write the package for ``names`` into ``parent / names.dist`` and return that folder.

    :raises UsageError: if the folder exists and is not empty, or cannot be written.
    """
    from apt import PLUGIN_API_VERSION
    from apt import __version__
    from apt.errors import UsageError

    project = parent / names.dist
    if project.exists() and (not project.is_dir() or any(project.iterdir())):
        raise UsageError(f"{str(project)!r} already exists and is not empty; choose another --dir or name")
    core_major = _major(__version__)
    values = {
        "name": names.name,
        "dist": names.dist,
        "package": names.package,
        "cls": names.cls,
        "title": names.title,
        "api": PLUGIN_API_VERSION,
        "core_min": f"{core_major}.0",
        "core_next": str(core_major + 1),
        # Orders that depend on the class name, computed so that the generated code stays
        # isort-clean and its __all__ sorted whatever the name.
        "test_imports": "\n".join(
            f"from {names.package} import {n}" for n in sorted(["ReluSquaredFFN", names.cls], key=str.lower)
        ),
        "all_names": ", ".join(f'"{n}"' for n in sorted(["ReluSquaredFFN", names.cls, names.cls + "Config"])),
        # pytest collects classes named Test* that the test module imports, and a plugin class
        # (it has an __init__) would fail collection under filterwarnings = error: opt it out.
        "not_a_test": _NOT_A_TEST if names.cls.startswith("Test") else "",
    }
    templates = resources.files("apt.cli").joinpath("_templates")
    files: dict[Path, str] = {}
    for rel, text in _walk(templates, Path()):
        files[_destination(rel, names)] = _render(text, values, rel)
    try:
        for rel_path, text in files.items():
            path = project / rel_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the plugin package into {str(project)!r}: {exc}") from exc
    return project


def _walk(node: Any, rel: Path) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            if child.name != "__pycache__":
                out += _walk(child, rel / child.name)
        elif child.name.endswith(".tmpl"):
            out.append((rel / child.name.removesuffix(".tmpl"), child.read_text(encoding="utf-8")))
    return out


def _destination(rel: Path, names: ScaffoldNames) -> Path:
    """Map a template path into the package: ``src/x`` → ``src/<package>/x``, ``tests/test_plugin.py`` → ``test_<name>``."""
    parts = rel.parts
    if parts[0] == "src":
        return Path("src", names.package, *parts[1:])
    if parts == ("tests", "test_plugin.py"):
        return Path("tests", f"test_{names.name}.py")
    return rel


def _render(text: str, values: dict[str, str], rel: Path) -> str:
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:  # a bug in apt-core's templates, not a user mistake
            raise KeyError(f"template {rel} uses unknown placeholder {{{{{key}}}}}")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", fill, text)


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 1
