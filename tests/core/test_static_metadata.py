"""apt.plugins._static: plugin metadata read from source, without importing plugin code."""

from __future__ import annotations

import importlib
import sys
import textwrap
import zlib
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


# --- handlers declared with @hook ----------------------------------------------------------


def test_hook_decorated_methods_are_read_as_hooks(site: Path) -> None:
    """`@hook("event")` in every import spelling adds its event (aliases mapped); a non-literal event is unknown."""
    _write(
        site,
        {
            "stat_hook_pkg.py": boom(
                """
            import apt.plugins
            import apt.plugins as ap
            from apt import plugins
            from apt.plugins import HookEvents
            from apt.plugins import Plugin
            from apt.plugins import hook
            from apt.plugins import hook as handles

            LOSS = "on_compute_loss"

            class Decorated(Plugin):
                name = "decorated"

                @hook("on_model_built", priority=-5)
                def capture(self, model, **kwargs):
                    pass

                @handles(LOSS)
                def add_loss(self, **kwargs):
                    return {}

                @plugins.hook("on_epoch_start")  # the original's alias
                def starting(self, **kwargs):
                    pass

                @ap.hook(HookEvents.ON_VALIDATION_END)
                @apt.plugins.hook(event="on_resume")
                def twice(self, **kwargs):
                    pass

                @staticmethod
                def helper():
                    pass

            class Computed(Plugin):
                name = "computed"

                @hook("on_step_end")
                def known(self, **kwargs):
                    pass

                @hook(pick_event())
                def unknown(self, **kwargs):
                    pass

            class Misspelled(Plugin):
                name = "misspelled"

                @hook("on_stepp_end")
                def typo(self, **kwargs):
                    pass
            """
            ),
        },
    )
    info = read_static_metadata("stat_hook_pkg:Decorated")
    assert info.complete, info.unknown
    assert info.hooks == ["on_compute_loss", "on_epoch_begin", "on_model_built", "on_resume", "on_validation_end"]
    computed = read_static_metadata("stat_hook_pkg:Computed")
    assert computed.unknown == ["hooks"]
    assert computed.hooks == ["on_step_end"]  # what is readable is still reported
    misspelled = read_static_metadata("stat_hook_pkg:Misspelled")
    assert misspelled.suspicious == ["typo"] and misspelled.hooks == []


def test_an_overriding_method_without_the_mark_is_no_handler(site: Path) -> None:
    """A subclass method that overrides a `@hook` method drops its mark, as at runtime."""
    _write(
        site,
        {
            "stat_hook_override.py": boom(
                """
            from apt.plugins import Plugin, hook

            class Base(Plugin):
                @hook("on_train_end")
                def finish(self, **kwargs):
                    pass

            class Sub(Base):
                name = "sub"

                def finish(self, **kwargs):
                    pass
            """
            ),
        },
    )
    assert read_static_metadata("stat_hook_override:Base").hooks == ["on_train_end"]
    assert read_static_metadata("stat_hook_override:Sub").hooks == []


def test_the_installed_align_plugin_reports_its_hook_decorated_handler() -> None:
    """apt-plugin-align declares `@hook("on_model_built")`: the static reader sees it."""
    info = read_static_metadata("apt_plugin_align:AlignPlugin")
    assert "on_model_built" in info.hooks


def test_hook_reexported_by_the_plugin_package_is_followed(site: Path) -> None:
    """`from ._compat import hook` where _compat imports apt's hook: still the @hook decorator."""
    _write(
        site,
        {
            "stat_hook_reexp/__init__.py": BOOM,
            "stat_hook_reexp/_compat.py": boom("from apt.plugins import hook as hook\n"),
            "stat_hook_reexp/_plugin.py": boom(
                """
            from apt.plugins import Plugin
            from ._compat import hook

            class P(Plugin):
                name = "p"

                @hook("on_train_end")
                def finish(self, **kwargs):
                    pass
            """
            ),
        },
    )
    assert read_static_metadata("stat_hook_reexp._plugin:P").hooks == ["on_train_end"]


# --- binding forms in a class body ---------------------------------------------------------


def test_tuple_and_list_assignments_are_unpacked(site: Path) -> None:
    """`name, version = "t", "3.1.0"` binds both, as Python does (nested and list targets too)."""
    _write(
        site,
        {
            "stat_tuple_pkg.py": boom(
                """
            from apt.plugins import Plugin

            class Tupl(Plugin):
                name, version = "tupl", "3.1.0"
                [priority, (description, critical)] = [7, ("tuple form", True)]
            """
            ),
        },
    )
    info = read_static_metadata("stat_tuple_pkg:Tupl")
    assert info.complete, info.unknown
    assert info.metadata["name"] == "tupl" and info.metadata["version"] == "3.1.0"
    assert info.metadata["priority"] == 7 and info.metadata["description"] == "tuple form"
    assert info.metadata["critical"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("name, version = 'x', make_version()", "version"),
        ("name, version = VALUES", "version"),
        ("name, *rest = 'x', 7, 'y'", "name"),
        ("if FLAG:\n        priority = 5", "priority"),
        ("try:\n        version = '1.0'\n    except Exception:\n        pass", "version"),
        ("for priority in range(3):\n        pass", "priority"),
        ("with ctx() as description:\n        pass", "description"),
        ("priority = 1\n    priority += 1", "priority"),
        ("(priority := 5)", "priority"),
        ("x = [(requires := ('a',))]", "requires"),
    ],
)
def test_bindings_that_cannot_be_read_make_the_field_unknown(site: Path, body: str, field: str) -> None:
    """A metadata name bound in a way that is not a plain literal is unknown, never Plugin's default."""
    module = f"stat_bind_{zlib.crc32(body.encode())}"
    _write(site, {f"{module}.py": boom(f"from apt.plugins import Plugin\nclass P(Plugin):\n    {body}\n")})
    info = read_static_metadata(f"{module}:P")
    assert field in info.unknown, (body, info.unknown, info.metadata)


def test_the_last_binding_in_a_class_body_wins(site: Path) -> None:
    """Python keeps a class body's last binding of a name; so does the static reader."""
    _write(
        site,
        {
            "stat_redef_pkg.py": boom(
                """
            from apt.plugins import Plugin

            class Redef(Plugin):
                name = "redef"
                priority = 1
                version = "1.0.0"
                priority = 2
                version, description = "1.5.0", "second"
            """
            ),
        },
    )
    info = read_static_metadata("stat_redef_pkg:Redef")
    assert info.complete, info.unknown
    assert info.metadata["priority"] == 2
    assert info.metadata["version"] == "1.5.0" and info.metadata["description"] == "second"


def test_get_version_and_get_name_overrides_beat_the_attributes(site: Path) -> None:
    """The kernel calls get_version()/get_name(): an override wins over any `version`/`name` attribute."""
    _write(
        site,
        {
            "stat_getver_pkg.py": boom(
                """
            from apt.plugins import Plugin

            class GetVer(Plugin):
                def get_version(self):
                    return "2.0.0"

                def get_name(self):
                    return "getver"

                version = "1.0.0"        # after the method: still not what the kernel uses
                name = "attribute_name"

            class Base(Plugin):
                def get_version(self):
                    return "3.0.0"

            class Sub(Base):
                name = "sub"
                version = "9.9.9"       # Base.get_version() is what runs

            class Computed(Plugin):
                name = "computed"
                version = "1.0.0"

                def get_version(self):
                    return read_version()
            """
            ),
        },
    )
    info = read_static_metadata("stat_getver_pkg:GetVer")
    assert info.complete, info.unknown
    assert (info.metadata["name"], info.metadata["version"]) == ("getver", "2.0.0")
    assert read_static_metadata("stat_getver_pkg:Sub").metadata["version"] == "3.0.0"
    computed = read_static_metadata("stat_getver_pkg:Computed")
    assert computed.unknown == ["version"]


# --- base classes in MRO order -------------------------------------------------------------


def test_attributes_are_read_in_mro_order(site: Path) -> None:
    """A diamond and a Plugin-before-mixin base list resolve attributes as Python's MRO does."""
    _write(
        site,
        {
            "stat_mro_pkg.py": boom(
                """
            from apt.plugins import Plugin

            class Base(Plugin):
                priority = 1
                description = "base"
            class A(Base):
                pass
            class B(Base):
                priority = 5
                def on_step_end(self, **kwargs):
                    pass
            class Diamond(A, B):          # MRO: Diamond, A, B, Base, Plugin
                name = "diamond"

            class Mixin:
                priority = 9
                description = "mixin"
                def on_train_end(self, **kwargs):
                    pass
            class MixOrder(Plugin, Mixin):   # MRO: MixOrder, Plugin, Mixin
                name = "mixorder"
            class MixFirst(Mixin, Plugin):   # MRO: MixFirst, Mixin, Plugin
                name = "mixfirst"
            """
            ),
        },
    )
    diamond = read_static_metadata("stat_mro_pkg:Diamond")
    assert diamond.complete, diamond.unknown
    assert diamond.metadata["priority"] == 5 and diamond.metadata["description"] == "base"
    assert diamond.hooks == ["on_step_end"]
    mix_order = read_static_metadata("stat_mro_pkg:MixOrder")
    assert mix_order.complete, mix_order.unknown
    assert mix_order.metadata["priority"] == 0 and mix_order.metadata["description"] == ""
    assert mix_order.hooks == []  # Plugin's no-op on_train_end comes first
    mix_first = read_static_metadata("stat_mro_pkg:MixFirst")
    assert mix_first.metadata["priority"] == 9 and mix_first.hooks == ["on_train_end"]


def test_an_unresolvable_base_makes_only_what_it_could_define_unknown(site: Path) -> None:
    """Fields set before an unreadable base in the MRO are known; the rest (and hooks) are unknown."""
    _write(
        site,
        {
            "stat_mro_unknown.py": boom(
                """
            from apt.plugins import Plugin
            from not_installed_anywhere import Mixin

            class Known(Plugin):
                priority = 3

            class Sub(Known, Mixin):     # MRO: Sub, Known, (Known's bases?), Mixin, ...
                name = "sub"

            class PluginFirst(Plugin, Mixin):
                name = "first"
            """
            ),
        },
    )
    sub = read_static_metadata("stat_mro_unknown:Sub")
    assert sub.metadata["name"] == "sub" and sub.metadata["priority"] == 3
    assert "name" not in sub.unknown and "priority" not in sub.unknown
    assert "version" in sub.unknown and "hooks" in sub.unknown
    first = read_static_metadata("stat_mro_unknown:PluginFirst")
    # Plugin precedes Mixin in every valid MRO: its defaults hold; only @hook methods may hide in Mixin
    assert first.unknown == ["hooks"]


# --- module-only entry points --------------------------------------------------------------

ABSTRACT_MODULE = """
import abc
from apt.plugins import Plugin

class Base(Plugin, abc.ABC):
    name = "base"

    @abc.abstractmethod
    def compute(self): ...

class Concrete(Base):
    name = "concrete"
    priority = 3

    def compute(self):
        return 1
"""


def test_module_only_entry_point_skips_abstract_bases(site: Path) -> None:
    """As at runtime, the abstract base of the only concrete plugin class is not picked."""
    _write(site, {"stat_modonly_pkg.py": boom(ABSTRACT_MODULE)})
    info = read_static_metadata("stat_modonly_pkg")
    assert info.error is None and info.qualname == "Concrete"
    assert info.metadata["name"] == "concrete" and info.metadata["priority"] == 3


MODULE_ONLY_CASES = {
    "abstract_base": ABSTRACT_MODULE,
    # without ABCMeta, @abstractmethod makes nothing abstract: two candidates
    "abstractmethod_without_abc": """
        from abc import abstractmethod
        from apt.plugins import Plugin

        class Base(Plugin):
            name = "base"
            @abstractmethod
            def compute(self): ...

        class Concrete(Base):
            name = "concrete"
            def compute(self):
                return 1
        """,
    # a subclass that does not implement every abstract method stays abstract
    "still_abstract": """
        from abc import ABC, abstractmethod
        from apt.plugins import Plugin

        class Base(Plugin, ABC):
            @abstractmethod
            def a(self): ...
            @abstractmethod
            def b(self): ...

        class Half(Base):
            def a(self):
                return 1

        class Full(Half):
            name = "full"
            def b(self):
                return 2
        """,
    # classes not derived from Plugin do not count, even if their base is named like one
    "helpers_are_not_plugins": """
        from apt.plugins import Plugin

        class HelperPlugin:
            pass

        class Helper(HelperPlugin):
            name = "helper"

        class Real(Plugin):
            name = "real"
        """,
    # a plugin class imported into the module counts, as at runtime
    "imported_plugin": """
        from apt.plugins import Plugin
        from stat_xcheck_shared import SharedPlugin
        """,
}


@pytest.mark.parametrize("case", sorted(MODULE_ONLY_CASES))
def test_module_only_selection_matches_the_runtime(site: Path, case: str) -> None:
    """The static choice for `value = "pkg.mod"` is the class plugin_class_from picks, or an error when it errs."""
    from apt.errors import PluginValidationError
    from apt.plugins._discovery import plugin_class_from

    module = f"stat_xcheck_{case}"
    _write(
        site,
        {
            f"{module}.py": textwrap.dedent(MODULE_ONLY_CASES[case]),
            "stat_xcheck_shared.py": "from apt.plugins import Plugin\nclass SharedPlugin(Plugin):\n    name = 'shared'\n",
        },
    )
    info = read_static_metadata(module)
    try:
        runtime: str | None = plugin_class_from(importlib.import_module(module), "x").__name__
    except PluginValidationError:
        runtime = None
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop("stat_xcheck_shared", None)
    assert info.qualname == runtime, (info.error, info.qualname, runtime)
    assert (info.error is None) is (runtime is not None)


def test_module_only_entry_point_ignores_functions_submodules_and_helpers(site: Path) -> None:
    """Functions, submodules, Plugin itself and classes of other distributions do not compete with the plugin."""
    _write(
        site,
        {
            "stat_modonly_pkg2/__init__.py": boom(
                """
            from apt.plugins import Plugin, hook
            from pydantic import BaseModel
            from . import _helpers
            from ._helpers import make_thing
            from ._plugin import RealPlugin

            class Settings(BaseModel):
                rate: float = 0.1
            """
            ),
            "stat_modonly_pkg2/_helpers.py": boom("def make_thing():\n    return 1\n"),
            "stat_modonly_pkg2/_plugin.py": boom(
                "from apt.plugins import Plugin\nclass RealPlugin(Plugin):\n    name = 'real'\n    priority = 4\n"
            ),
        },
    )
    info = read_static_metadata("stat_modonly_pkg2")
    assert info.error is None, info.error
    assert (info.module, info.qualname) == ("stat_modonly_pkg2._plugin", "RealPlugin")
    assert info.metadata["priority"] == 4


def test_module_only_entry_point_that_cannot_be_decided_is_unknown(site: Path) -> None:
    """A candidate whose base from the plugin's own package cannot be read makes the choice ambiguous: no guess.

    A base from another distribution that cannot be read (a lazily exported pydantic class,
    an extension type) is not taken for a Plugin subclass.
    """
    _write(
        site,
        {
            "stat_modonly_amb/__init__.py": boom(
                """
            from apt.plugins import Plugin
            from stat_modonly_amb._made import Made   # made at runtime: it may derive from Plugin

            class Maybe(Made):
                name = "maybe"

            class Sure(Plugin):
                name = "sure"
            """
            ),
            "stat_modonly_amb/_made.py": boom("Made = make_base()\n"),
            "stat_modonly_foreign.py": boom(
                """
            from apt.plugins import Plugin
            from not_installed_anywhere import Model

            class Settings(Model):
                rate = 0.1

            class Sure(Plugin):
                name = "sure"
            """
            ),
        },
    )
    info = read_static_metadata("stat_modonly_amb")
    assert info.error is not None and "cannot tell which class is its plugin (Sure, Maybe" in info.error
    assert info.unknown == [*METADATA_FIELDS, "hooks"]
    foreign = read_static_metadata("stat_modonly_foreign")
    assert foreign.error is None and foreign.qualname == "Sure"
