"""apt.plugins._static: plugin metadata read from source, without importing plugin code."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
from apt.plugins._static import METADATA_FIELDS
from apt.plugins._static import read_static_metadata


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path where tests write throwaway plugin packages."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


# Every module below raises on import: reading its metadata must never execute it.
BOOM = "raise RuntimeError('plugin code was imported')\n"


def boom(code: str) -> str:
    """Module source that raises on import, followed by ``code``."""
    return BOOM + textwrap.dedent(code)


def test_reads_literal_attributes_and_hooks_through_reexport(site: Path) -> None:
    """`pkg:Class` re-exported from `pkg._plugin` is followed; literals, hooks and aliases are read."""
    _write(
        site,
        {
            "stat_pkg_a/__init__.py": BOOM + "from ._plugin import DemoPlugin as DemoPlugin\n",
            "stat_pkg_a/_version.py": "__version__ = '2.3.4'\n",
            "stat_pkg_a/_plugin.py": boom(
                """
            from apt.plugins import Plugin
            from ._version import __version__

            NAME = "demo"

            class DemoPlugin(Plugin):
                name = NAME
                version = __version__
                description: str = "A demo plugin."
                requires = ("moe>=1.0",)
                conflicts = ["other"]
                priority = -5
                critical = False
                providers = ("ffn:demo",)
                api_version = ">=1,<2"

                def setup(self, registry, hook_manager):
                    registry.register("ffn", "demo", object)

                def on_step_end(self, step, **kwargs):
                    return {"demo": 1.0}

                def on_epoch_start(self, epoch, **kwargs):  # the original's alias
                    pass

                def on_enable(self, trainer=None, epoch=None, step=None):  # not a hook
                    pass

                def on_epoc_end(self, **kwargs):  # misspelled
                    pass
            """
            ),
        },
    )
    info = read_static_metadata("stat_pkg_a:DemoPlugin")
    assert info.error is None
    assert info.complete, info.unknown
    assert info.module == "stat_pkg_a._plugin"
    assert info.qualname == "DemoPlugin"
    assert info.file == site / "stat_pkg_a" / "_plugin.py"
    assert info.metadata == {
        "name": "demo",
        "version": "2.3.4",
        "description": "A demo plugin.",
        "requires": ["moe>=1.0"],
        "conflicts": ["other"],
        "priority": -5,
        "critical": False,
        "providers": ["ffn:demo"],
        "api_version": ">=1,<2",
    }
    assert info.hooks == ["on_epoch_begin", "on_step_end"]
    assert info.suspicious == ["on_epoc_end"]
    assert "stat_pkg_a" not in sys.modules and "stat_pkg_a._plugin" not in sys.modules


def test_defaults_come_from_plugin_and_original_get_name_style(site: Path) -> None:
    """Attributes a class does not set take Plugin's defaults; `def get_name(): return '...'` is read."""
    _write(
        site,
        {
            "stat_pkg_b.py": boom(
                """
            from apt import plugins

            class OldStyle(plugins.Plugin):
                def get_name(self) -> str:
                    \"\"\"The name.\"\"\"
                    return "old_style"

                def get_version(self) -> str:
                    return "1.0.0"
            """
            ),
        },
    )
    info = read_static_metadata("stat_pkg_b:OldStyle")
    assert info.complete, (info.error, info.unknown)
    assert info.metadata["name"] == "old_style"
    assert info.metadata["version"] == "1.0.0"
    assert info.metadata["priority"] == METADATA_FIELDS["priority"]
    assert info.metadata["requires"] == []
    assert info.hooks == []


def test_inherited_attributes_from_a_base_in_another_module(site: Path) -> None:
    """A base class in another module of the package is read too; the subclass's values win."""
    _write(
        site,
        {
            "stat_pkg_c/__init__.py": BOOM,
            "stat_pkg_c/base.py": boom(
                """
            from apt.plugins.base import Plugin

            class Base(Plugin):
                priority = 7
                description = "from base"

                def on_train_begin(self, **kwargs):
                    pass
            """
            ),
            "stat_pkg_c/impl.py": boom(
                """
            from stat_pkg_c import base

            class Impl(base.Base):
                name = "impl"
                description = "from impl"
            """
            ),
        },
    )
    info = read_static_metadata("stat_pkg_c.impl:Impl")
    assert info.complete, info.unknown
    assert info.metadata["priority"] == 7
    assert info.metadata["description"] == "from impl"
    assert info.hooks == ["on_train_begin"]


def test_computed_values_and_unreadable_bases_are_unknown(site: Path) -> None:
    """A non-literal value is reported unknown; a base class that cannot be read makes the rest unknown."""
    _write(
        site,
        {
            "stat_pkg_d.py": boom(
                """
            import importlib.metadata
            from apt.plugins import Plugin
            from somewhere_not_installed import Mixin

            class Computed(Plugin):
                name = "computed"
                version = importlib.metadata.version("stat-pkg-d")
                priority = 1 + 2

            class Mixed(Mixin, Plugin):
                name = "mixed"
                def on_step_end(self, **kwargs):
                    pass
            """
            ),
        },
    )
    computed = read_static_metadata("stat_pkg_d:Computed")
    assert computed.metadata["name"] == "computed"
    assert computed.unknown == ["version", "priority"]
    assert not computed.complete

    mixed = read_static_metadata("stat_pkg_d:Mixed")
    assert mixed.metadata["name"] == "mixed"
    assert "name" not in mixed.unknown
    assert "priority" in mixed.unknown and "hooks" in mixed.unknown
    assert mixed.hooks == ["on_step_end"]  # what it defines itself is still reported


def test_wrong_types_are_unknown_not_trusted(site: Path) -> None:
    """A literal of the wrong type (priority as a string) is not passed off as metadata."""
    _write(site, {"stat_pkg_e.py": "from apt.plugins import Plugin\nclass P(Plugin):\n    priority = 'high'\n"})
    info = read_static_metadata("stat_pkg_e:P")
    assert "priority" in info.unknown
    assert info.metadata["priority"] == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("stat_missing_pkg:Thing", "cannot locate the source of module 'stat_missing_pkg'"),
        ("stat_pkg_f:Nope", "cannot find class 'Nope' in module 'stat_pkg_f'"),
        ("stat_pkg_f.sub.deeper:Thing", "cannot locate the source of module 'stat_pkg_f.sub.deeper'"),
        (":Thing", "names no module"),
        ("stat_pkg_f", "defines 2 Plugin subclasses"),
    ],
)
def test_errors_name_the_module_or_class(site: Path, target: str, message: str) -> None:
    """What cannot be located is an error naming the culprit; every field is then unknown."""
    _write(
        site,
        {
            "stat_pkg_f/__init__.py": BOOM
            + "from apt.plugins import Plugin\nclass A(Plugin):\n    name = 'a'\nclass B(Plugin):\n    name = 'b'\n",
        },
    )
    info = read_static_metadata(target)
    assert info.error is not None and message in info.error
    assert info.unknown == [*METADATA_FIELDS, "hooks"]
    # only a top-level package that is not installed at all is sure to fail on import too
    assert info.missing is (target == "stat_missing_pkg:Thing")


def test_module_only_entry_point_with_one_plugin_class(site: Path) -> None:
    """An entry point naming just a module is accepted when the module defines exactly one plugin class."""
    _write(
        site, {"stat_pkg_g/__init__.py": BOOM + "from apt.plugins import Plugin\nclass G(Plugin):\n    name = 'g'\n"}
    )
    info = read_static_metadata("stat_pkg_g")
    assert info.qualname == "G" and info.metadata["name"] == "g"


def test_namespace_package_portion_is_walked(site: Path) -> None:
    """A namespace package (no __init__.py) on the way to the module is walked by hand."""
    _write(site, {"stat_ns/inner/mod.py": "from apt.plugins import Plugin\nclass N(Plugin):\n    name = 'n'\n"})
    info = read_static_metadata("stat_ns.inner.mod:N")
    assert info.error is None
    assert info.metadata["name"] == "n"


def test_to_dict_is_json_ready(site: Path) -> None:
    """to_dict() holds only JSON types."""
    import json

    _write(site, {"stat_pkg_h.py": "from apt.plugins import Plugin\nclass H(Plugin):\n    name = 'h'\n"})
    data = read_static_metadata("stat_pkg_h:H").to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["name"] == "h" and data["file"].endswith("stat_pkg_h.py")
