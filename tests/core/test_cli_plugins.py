"""`apt plugins list|info|doctor|order`: metadata-only listing, status, the doctor's report, the order and why."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apt.cli import main
from apt.plugins import AUTOLOAD_ENV
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points


class SourceEntryPoint(FakeEntryPoint):
    """An entry point whose value names a real module on sys.path; load() imports it, like the real thing."""

    def __init__(self, name: str, value: str, **kwargs: Any) -> None:
        super().__init__(name, None, value=value, **kwargs)

    def load(self) -> Any:
        self.loads += 1
        module, _, attr = self.value.partition(":")
        return getattr(importlib.import_module(module), attr)


MODULES = {
    "cli_alpha": """
        from apt.plugins import Plugin

        class AlphaPlugin(Plugin):
            name = "alpha"
            version = "1.2.0"
            description = "First plugin."
            priority = 5
            critical = False
            providers = ("ffn:alpha",)

            def setup(self, registry, hook_manager):
                super().setup(registry, hook_manager)
                registry.register("ffn", "alpha", dict)

            def on_train_begin(self, **kwargs):
                pass

            def on_step_end(self, step, **kwargs):
                pass
    """,
    "cli_beta": """
        from apt.plugins import Plugin

        class BetaPlugin(Plugin):
            name = "beta"
            version = "0.4.0"
            requires = ("alpha>=1.0",)
            priority = 50
            critical = False

            def on_step_end(self, step, **kwargs):
                pass
    """,
    "cli_gamma": """
        from apt.plugins import Plugin

        class GammaPlugin(Plugin):
            name = "gamma"
            version = "2.0.0"
            critical = False

            def on_step_end(self, step, **kwargs):
                pass
    """,
    "cli_broken": """
        from apt.plugins import Plugin

        raise ImportError("No module named 'torch_scatter'")

        class BrokenPlugin(Plugin):
            name = "broken"
            version = "0.1.0"

            def on_step_end(self, **kwargs):
                pass
    """,
    "cli_future": """
        from apt.plugins import Plugin

        class FuturePlugin(Plugin):
            name = "future"
            version = "3.0.0"
            api_version = ">=2,<3"
    """,
}

ENTRY_POINTS = {
    "alpha": ("cli_alpha:AlphaPlugin", "apt-plugin-alpha", "1.2.0"),
    "beta": ("cli_beta:BetaPlugin", "apt-plugin-beta", "0.4.0"),
    "gamma": ("cli_gamma:GammaPlugin", "apt-plugin-gamma", "2.0.0"),
    "broken": ("cli_broken:BrokenPlugin", "apt-plugin-broken", "0.1.0"),
    "future": ("cli_future:FuturePlugin", "apt-plugin-future", "3.0.0"),
}


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, SourceEntryPoint]]:
    """Plugins 'installed' as real modules on sys.path with entry points of the apt.plugins group."""
    for module, source in MODULES.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = {
        name: SourceEntryPoint(name, value, distribution=dist, version=version)
        for name, (value, dist, version) in ENTRY_POINTS.items()
    }
    with fake_entry_points(*eps.values()):
        yield eps
    for module in MODULES:
        sys.modules.pop(module, None)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(out)}


# --- list ------------------------------------------------------------------------------


def test_list_reads_metadata_without_importing_plugin_code(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --json` shows every field from metadata, and not one plugin module is imported."""
    code, out, _ = _run(capsys, "plugins", "list", "--json")
    assert code == 0
    rows = _rows(out)
    assert sorted(rows) == ["alpha", "beta", "broken", "future", "gamma"]
    alpha = rows["alpha"]
    assert alpha["version"] == "1.2.0" and alpha["distribution"] == "apt-plugin-alpha"
    assert alpha["status"] == "available" and alpha["reason"] is None
    assert alpha["priority"] == 5 and alpha["providers"] == ["ffn:alpha"]
    assert alpha["hooks"] == ["on_step_end", "on_train_begin"]
    assert rows["beta"]["requires"] == ["alpha>=1.0"] and rows["beta"]["status"] == "available"
    # the import error of 'broken' is invisible without importing: it is listed as available
    assert rows["broken"]["status"] == "available"
    assert all(ep.loads == 0 for ep in installed.values())
    assert not any(m in sys.modules for m in MODULES)


def test_list_predicts_failures_visible_in_metadata(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin-API mismatch is a failure with both versions named, found without importing."""
    code, out, _ = _run(capsys, "plugins", "list", "--json")
    future = _rows(out)["future"]
    assert future["status"] == "failed: supports plugin API >=2,<3, apt-core provides 1.0"
    assert installed["future"].loads == 0


def test_list_status_follows_config_and_environment(
    installed: dict[str, SourceEntryPoint],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """disable_plugins, a plugins: list and APT_DISABLE_PLUGIN_AUTOLOAD make plugins 'disabled', with the reason."""
    config = tmp_path / "run.yaml"
    config.write_text("disable_plugins: [gamma]\n", encoding="utf-8")
    rows = _rows(_run(capsys, "plugins", "list", "--json", "--config", str(config))[1])
    assert rows["gamma"]["status"] == "disabled" and rows["gamma"]["reason"] == "listed in disable_plugins"
    assert rows["alpha"]["status"] == "available"

    config.write_text("plugins: [beta]\n", encoding="utf-8")
    rows = _rows(_run(capsys, "plugins", "list", "--json", "--config", str(config))[1])
    assert rows["beta"]["status"] == "failed: requires 'alpha', which is disabled"
    assert rows["alpha"]["reason"] == "not named in the config's plugins: list"

    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    rows = _rows(_run(capsys, "plugins", "list", "--json")[1])
    assert {r["status"] for r in rows.values() if r["name"] != "future"} == {"disabled"}
    assert rows["alpha"]["reason"] == f"{AUTOLOAD_ENV} is set and the config does not name it"


def test_list_tells_unreadable_from_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A class made at runtime is 'available' with a note; a package that is not installed is 'failed'."""
    (tmp_path / "cli_dynamic.py").write_text(
        "from apt.plugins import Plugin\n"
        "def make():\n"
        "    return type('Dyn', (Plugin,), {'name': 'dynamic'})\n"
        "Dyn = make()\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = [SourceEntryPoint("dynamic", "cli_dynamic:Dyn"), SourceEntryPoint("gone", "cli_not_installed_pkg:Gone")]
    try:
        with fake_entry_points(*eps):
            rows = _rows(_run(capsys, "plugins", "list", "--json")[1])
            checked = _rows(_run(capsys, "plugins", "list", "--json", "--check")[1])
    finally:
        sys.modules.pop("cli_dynamic", None)
    assert rows["dynamic"]["status"] == "available"
    assert rows["dynamic"]["note"].startswith("metadata not readable without importing (cannot find class 'Dyn'")
    assert rows["gone"]["status"].startswith("failed: cannot locate the source of module 'cli_not_installed_pkg'")
    assert checked["dynamic"]["status"] == "loaded" and checked["dynamic"]["note"] is None
    assert checked["gone"]["status"].startswith("failed: plugin 'gone'")


def test_list_table_and_check(installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]) -> None:
    """The table has one line per plugin; `--check` imports and reports loaded / failed with the cause."""
    code, out, _ = _run(capsys, "plugins", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "DISTRIBUTION",
        "STATUS",
        "PRIORITY",
        "REQUIRES",
        "CONFLICTS",
        "PROVIDERS",
        "HOOKS",
    ]
    assert lines[1].split()[:5] == ["alpha", "1.2.0", "apt-plugin-alpha", "available", "5"]
    assert "future: failed: supports plugin API >=2,<3, apt-core provides 1.0" in out

    code, out, _ = _run(capsys, "plugins", "list", "--json", "--check")
    rows = _rows(out)
    assert {n: r["status"].split(":")[0] for n, r in rows.items()} == {
        "alpha": "loaded",
        "beta": "loaded",
        "gamma": "loaded",
        "broken": "failed",
        "future": "failed",
    }
    assert "No module named 'torch_scatter'" in rows["broken"]["reason"]
    assert "apt-core provides plugin API 1.0" in rows["future"]["reason"]


def test_list_with_nothing_installed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No plugin installed is a friendly line, not an empty table."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with fake_entry_points():
        code, out, _ = _run(capsys, "plugins", "list")
    assert code == 0 and out.startswith("no APT plugins installed")


def test_list_imports_neither_torch_nor_plugin_code(tmp_path: Path) -> None:
    """In a fresh interpreter, `apt plugins list` over the really installed plugins leaves torch unimported."""
    script = (
        "import sys, io, contextlib\n"
        "from apt.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(['plugins', 'list', '--json'])\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'apt_plugin_')))\n"
        "print(code, bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 []"


# --- info ------------------------------------------------------------------------------


def test_info_shows_one_plugin(installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]) -> None:
    """`info NAME` prints metadata and origin; `--json` the same as a dict."""
    code, out, _ = _run(capsys, "plugins", "info", "beta")
    assert code == 0
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["name"].strip() == "beta"
    assert fields["requires"].strip() == "alpha>=1.0"
    assert fields["entry point"].strip() == "cli_beta:BetaPlugin"
    assert fields["file"].strip().endswith("cli_beta.py")
    data = json.loads(_run(capsys, "plugins", "info", "alpha", "--json")[1])
    assert data["providers"] == ["ffn:alpha"] and data["status"] == "available"


def test_info_unknown_name_is_a_usage_error(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown name exits 2 with one line naming the installed plugins and the closest one."""
    code, _, err = _run(capsys, "plugins", "info", "alpah")
    assert code == 2
    assert err.strip() == (
        "apt: error: no installed plugin is named 'alpah' (did you mean 'alpha'?); "
        "installed: alpha, beta, broken, future, gamma (see `apt plugins list`)"
    )


# --- doctor ----------------------------------------------------------------------------


def test_doctor_reports_failures_and_exits_1(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """The doctor imports everything; a failing plugin is reported with stage, origin and cause; exit 1."""
    code, out, _ = _run(capsys, "plugins", "doctor")
    assert code == 1
    assert "[ok  ] alpha (apt-plugin-alpha 1.2.0)" in out
    assert "[FAIL] broken (apt-plugin-broken 0.1.0)" in out
    assert "No module named 'torch_scatter'" in out
    assert "[FAIL] future (apt-plugin-future 3.0.0)" in out
    assert "load order: alpha -> beta -> gamma" in out
    assert out.rstrip().endswith("3 of 5 plugins OK; failed: broken, future")

    report = json.loads(_run(capsys, "plugins", "doctor", "--json")[1])
    assert report["ok"] is False and report["failed"] == ["broken", "future"]
    broken = next(p for p in report["plugins"] if p["name"] == "broken")
    assert broken["failure"]["stage"] == "import" and broken["failure"]["distribution"] == "apt-plugin-broken"


def test_doctor_reports_dependents_of_a_failure_with_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin whose requirement fails is reported too, with the requirement chain."""
    (tmp_path / "cli_needs_broken.py").write_text(
        "from apt.plugins import Plugin\nclass NeedsBroken(Plugin):\n    name = 'needs'\n    requires = ('broken',)\n",
        encoding="utf-8",
    )
    (tmp_path / "cli_broken.py").write_text(textwrap.dedent(MODULES["cli_broken"]), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = [
        SourceEntryPoint("broken", "cli_broken:BrokenPlugin", distribution="apt-plugin-broken"),
        SourceEntryPoint("needs", "cli_needs_broken:NeedsBroken", distribution="apt-plugin-needs"),
    ]
    try:
        with fake_entry_points(*eps):
            code, out, _ = _run(capsys, "plugins", "doctor", "--json")
    finally:
        sys.modules.pop("cli_needs_broken", None)
    assert code == 1
    needs = next(p for p in json.loads(out)["plugins"] if p["name"] == "needs")
    assert needs["failure"]["stage"] == "requires"
    assert needs["failure"]["chain"] == ["needs", "broken"]


def test_doctor_passes_when_every_plugin_loads(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """With only plugins that load installed, the doctor exits 0."""
    with fake_entry_points(installed["alpha"], installed["gamma"]):
        code, out, _ = _run(capsys, "plugins", "doctor")
    assert code == 0
    assert out.rstrip().endswith("2 of 2 plugins OK")


def test_doctor_bad_config_section_is_that_plugins_failure(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config error in one plugin's section fails that plugin, named with the key; the rest still load."""
    (tmp_path / "cli_typed.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, ConfigDict, Field
            from apt.plugins import Plugin

            class TypedConfig(BaseModel):
                model_config = ConfigDict(extra="forbid")
                rate: float = Field(0.5, gt=0)

            class TypedPlugin(Plugin):
                name = "typed"
                config_model = TypedConfig
            """
        ),
        encoding="utf-8",
    )
    importlib.invalidate_caches()
    config = tmp_path / "run.yaml"
    config.write_text("typed: {rate: -1}\n", encoding="utf-8")
    typed = SourceEntryPoint("typed", "cli_typed:TypedPlugin", distribution="apt-plugin-typed")
    try:
        with fake_entry_points(installed["alpha"], typed):
            code, out, _ = _run(capsys, "plugins", "doctor", "--json", "--config", str(config))
    finally:
        sys.modules.pop("cli_typed", None)
    assert code == 1
    report = json.loads(out)
    failure = next(p for p in report["plugins"] if p["name"] == "typed")["failure"]
    assert failure["stage"] == "config" and "typed.rate" in failure["error"]
    assert next(p for p in report["plugins"] if p["name"] == "alpha")["result"] == "loaded"


# --- order -----------------------------------------------------------------------------


def test_order_prints_each_event_with_the_reason(
    installed: dict[str, SourceEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """requires beats priority (the requirement inherits its dependent's priority); the rest by priority."""
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [alpha, beta, gamma]\n", encoding="utf-8")
    code, out, _ = _run(capsys, "plugins", "order", "--config", str(config), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["plugins"] == ["alpha", "beta", "gamma"]
    step_end = report["order"]["on_step_end"]
    assert [r["plugin"] for r in step_end] == ["alpha", "beta", "gamma"]
    assert step_end[0]["reason"] == "priority 50 (own 5, raised because beta requires it)"
    assert step_end[1]["reason"].startswith("priority 50; after alpha (requires)")
    assert step_end[2]["reason"] == "priority 0"
    assert [r["plugin"] for r in report["order"]["on_train_begin"]] == ["alpha"]
    assert "on_epoch_end" not in report["order"]  # events nobody handles are left out

    code, out, _ = _run(capsys, "plugins", "order", "--config", str(config), "--event", "on_step_end")
    assert code == 0
    assert "plugins in resolved order: alpha -> beta -> gamma" in out
    assert "  1. alpha:AlphaPlugin.on_step_end  -- priority 50 (own 5, raised because beta requires it)" in out
    assert "on_train_begin" not in out


def test_order_breaks_ties_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Equal priorities run in name order, whatever order the entry points were found in, and say so."""
    for name in ("zulu", "mike", "alfa"):
        (tmp_path / f"cli_tie_{name}.py").write_text(
            f"from apt.plugins import Plugin\nclass P(Plugin):\n    name = {name!r}\n"
            "    def on_step_end(self, **kwargs):\n        pass\n",
            encoding="utf-8",
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = [SourceEntryPoint(n, f"cli_tie_{n}:P") for n in ("zulu", "mike", "alfa")]
    try:
        with fake_entry_points(*eps):
            report = json.loads(_run(capsys, "plugins", "order", "--json")[1])
    finally:
        for n in ("zulu", "mike", "alfa"):
            sys.modules.pop(f"cli_tie_{n}", None)
    rows = report["order"]["on_step_end"]
    assert [r["plugin"] for r in rows] == ["alfa", "mike", "zulu"]
    assert rows[0]["reason"] == "priority 0"
    assert rows[1]["reason"] == "priority 0; same priority as alfa: by name"
    assert rows[2]["reason"] == "priority 0; same priority as mike: by name"


def test_plugins_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`apt plugins` alone shows the subcommands and exits 2."""
    code, out, _ = _run(capsys, "plugins")
    assert code == 2
    assert "list" in out and "doctor" in out and "order" in out


# --- list and --check agree on tricky class bodies -------------------------------------

TRICKY = {
    "cli_tricky": """
        import abc
        from apt.plugins import Plugin
        from apt.plugins import hook


        class Decorated(Plugin):
            name = "decorated"
            critical = False

            @hook("on_compute_loss")
            def add_loss(self, **kwargs):
                return None

            @hook("on_epoch_start", priority=3)
            def starting(self, **kwargs):
                pass


        class Tupl(Plugin):
            name, version = "tupl", "3.1.0"
            priority, description = 7, "tuple form"


        class User(Plugin):
            name = "user"
            requires = ("tupl>=3",)


        class Redef(Plugin):
            name = "redef"
            priority = 1
            priority = 2


        class GetVer(Plugin):
            name = "getver"
            version = "1.0.0"

            def get_version(self):
                return "2.0.0"


        class Base(Plugin):
            priority = 1
        class A(Base):
            pass
        class B(Base):
            priority = 5
        class Diamond(A, B):
            name = "diamond"


        class Mixin:
            priority = 9
        class MixOrder(Plugin, Mixin):
            name = "mixorder"
    """,
    "cli_modonly": """
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
    """,
}

TRICKY_ENTRY_POINTS = {
    "decorated": "cli_tricky:Decorated",
    "tupl": "cli_tricky:Tupl",
    "user": "cli_tricky:User",
    "redef": "cli_tricky:Redef",
    "getver": "cli_tricky:GetVer",
    "diamond": "cli_tricky:Diamond",
    "mixorder": "cli_tricky:MixOrder",
    "concrete": "cli_modonly",
}


class ModuleEntryPoint(SourceEntryPoint):
    """Like SourceEntryPoint, for a value with or without ':Class' (the module itself when without)."""

    def load(self) -> Any:
        self.loads += 1
        module, _, attr = self.value.partition(":")
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj


def test_list_agrees_with_check_on_tricky_class_bodies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """@hook handlers, tuple bindings, rebinding, get_version(), the MRO and module-only entry points:
    what `list` reads from source is what `list --check` finds by importing."""
    for module, source in TRICKY.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = [
        ModuleEntryPoint(name, value, distribution="apt-plugin-tricky") for name, value in TRICKY_ENTRY_POINTS.items()
    ]
    try:
        with fake_entry_points(*eps):
            static = _rows(_run(capsys, "plugins", "list", "--json")[1])
            checked = _rows(_run(capsys, "plugins", "list", "--json", "--check")[1])
    finally:
        for module in TRICKY:
            sys.modules.pop(module, None)
    assert static["decorated"]["hooks"] == ["on_compute_loss", "on_epoch_begin"]
    assert (static["tupl"]["version"], static["tupl"]["priority"]) == ("3.1.0", 7)
    assert static["user"]["status"] == "available"
    assert static["redef"]["priority"] == 2
    assert static["getver"]["version"] == "2.0.0"
    assert static["diamond"]["priority"] == 5
    assert static["mixorder"]["priority"] == 0
    assert static["concrete"]["status"] == "available" and static["concrete"]["priority"] == 3
    for name, row in static.items():
        assert row["unknown"] == [], (name, row["unknown"])
        assert checked[name]["status"] == "loaded", (name, checked[name]["status"])
        for field in ("version", "priority", "requires", "conflicts", "providers", "hooks", "description"):
            assert row[field] == checked[name][field], (name, field, row[field], checked[name][field])


# --- --check refreshes every field -------------------------------------------------------


def test_check_replaces_every_metadata_field_by_the_loaded_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fields not readable from source (a computed description / api_version) are the real ones after --check."""
    (tmp_path / "cli_computed.py").write_text(
        textwrap.dedent(
            """
            from apt.plugins import Plugin

            class Computed(Plugin):
                name = "computed"
                description = " ".join(["Computed", "description"])
                api_version = ">=1," + "<3"
                version = ".".join(["4", "5", "6"])
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    ep = SourceEntryPoint("computed", "cli_computed:Computed", distribution="apt-plugin-computed", version="0.9")
    try:
        with fake_entry_points(ep):
            static = _rows(_run(capsys, "plugins", "list", "--json")[1])["computed"]
            checked = _rows(_run(capsys, "plugins", "list", "--json", "--check")[1])["computed"]
            info = _run(capsys, "plugins", "info", "computed", "--check")[1]
    finally:
        sys.modules.pop("cli_computed", None)
    assert static["unknown"] == ["version", "description", "api_version"]
    assert checked["unknown"] == []
    assert checked["name"] == "computed" and checked["version"] == "4.5.6"
    assert checked["description"] == "Computed description"
    assert checked["api_version"] == ">=1,<3"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines())}
    assert fields["description"] == "Computed description"
    assert fields["api_version"] == ">=1,<3"
    assert fields["version"] == "4.5.6"


# --- order: ties explained by what decided them --------------------------------------------


def test_order_explains_a_tie_by_the_resolved_plugin_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tie broken by a requirement or by plugin priority is explained so, not as 'by name'."""
    (tmp_path / "cli_ord.py").write_text(
        textwrap.dedent(
            """
            from apt.plugins import Plugin, hook

            class Z(Plugin):
                name = "z"
            class A(Plugin):
                name = "a"
                requires = ("z",)
                def on_step_end(self, **kw): pass
            class M(Plugin):
                name = "m"
                def on_step_end(self, **kw): pass

            class HB(Plugin):
                name = "hb"
                priority = 10
                @hook("on_epoch_end", priority=5)
                def h(self, **kw): pass
            class HA(Plugin):
                name = "ha"
                @hook("on_epoch_end", priority=5)
                def h(self, **kw): pass
            class HC(Plugin):
                name = "hc"
                @hook("on_epoch_end", priority=5)
                def h(self, **kw): pass
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    importlib.invalidate_caches()
    eps = [SourceEntryPoint(n, f"cli_ord:{n.upper()}") for n in ("a", "m", "z", "hb", "ha", "hc")]
    try:
        with fake_entry_points(*eps):
            report = json.loads(_run(capsys, "plugins", "order", "--json")[1])
    finally:
        sys.modules.pop("cli_ord", None)
    assert report["plugins"] == ["hb", "ha", "hc", "m", "z", "a"]
    step_end = report["order"]["on_step_end"]
    assert [r["plugin"] for r in step_end] == ["m", "a"]  # not name order: a waits for z
    assert step_end[1]["reason"] == (
        "priority 0; after z (requires); same priority as m: later in the plugin order (its requirement z comes after m)"
    )
    epoch_end = report["order"]["on_epoch_end"]
    assert [r["plugin"] for r in epoch_end] == ["hb", "ha", "hc"]
    assert epoch_end[1]["reason"] == (
        "priority 5 (given at registration); same priority as hb: later in the plugin order (plugin priority 0 < hb's 10)"
    )
    assert epoch_end[2]["reason"] == "priority 5 (given at registration); same priority as ha: by name"
