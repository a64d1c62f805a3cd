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
    "alpha": ("cli_alpha:AlphaPlugin", "apt-plugin-alpha", "1.2.0", "Alpha: the first plugin."),
    "beta": ("cli_beta:BetaPlugin", "apt-plugin-beta", "0.4.0", None),
    "gamma": ("cli_gamma:GammaPlugin", "apt-plugin-gamma", "2.0.0", None),
    "broken": ("cli_broken:BrokenPlugin", "apt-plugin-broken", "0.1.0", None),
    "future": ("cli_future:FuturePlugin", "apt-plugin-future", "3.0.0", None),
}


def _source_entry_point(name: str, value: str, **kwargs: Any) -> FakeEntryPoint:
    """An entry point whose value names a real module on sys.path: load() imports it, like the real thing."""
    return FakeEntryPoint(name, None, value=value, **kwargs)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for plugin modules; whatever the test imported from it is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    before = set(sys.modules)
    yield tmp_path
    for module in set(sys.modules) - before:
        if module.startswith("cli_"):
            del sys.modules[module]


def _write(folder: Path, sources: dict[str, str]) -> None:
    for module, source in sources.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    importlib.invalidate_caches()


@pytest.fixture
def installed(modules: Path) -> Iterator[dict[str, FakeEntryPoint]]:
    """Plugins 'installed' as real modules on sys.path with entry points of the apt.plugins group."""
    _write(modules, MODULES)
    eps = {
        name: _source_entry_point(name, value, distribution=dist, version=version, summary=summary)
        for name, (value, dist, version, summary) in ENTRY_POINTS.items()
    }
    with fake_entry_points(*eps.values()):
        yield eps


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(out)}


# --- list ------------------------------------------------------------------------------


def test_list_reads_metadata_without_importing_plugin_code(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --json` shows what the entry points and distributions say, and not one plugin module is imported."""
    code, out, _ = _run(capsys, "plugins", "list", "--json")
    assert code == 0
    rows = _rows(out)
    assert sorted(rows) == ["alpha", "beta", "broken", "future", "gamma"]
    assert rows["alpha"] == {
        "name": "alpha",
        "distribution": "apt-plugin-alpha",
        "version": "1.2.0",
        "summary": "Alpha: the first plugin.",
        "target": "cli_alpha:AlphaPlugin",
        "status": "available",
        "reason": None,
        "plugin": None,
        "failure": None,
    }
    assert rows["beta"]["summary"] is None
    # an import error or an API mismatch is invisible without importing: both are available
    assert rows["broken"]["status"] == rows["future"]["status"] == "available"
    assert all(ep.loads == 0 for ep in installed.values())
    assert not any(m in sys.modules for m in MODULES)


def test_list_status_follows_config_and_environment(
    installed: dict[str, FakeEntryPoint],
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
    assert rows["beta"]["status"] == "available"
    assert rows["alpha"]["reason"] == "not named in the config's plugins: list"

    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    rows = _rows(_run(capsys, "plugins", "list", "--json")[1])
    assert {r["status"] for r in rows.values()} == {"disabled"}
    assert rows["alpha"]["reason"] == f"{AUTOLOAD_ENV} is set and the config does not name it"
    assert not any(m in sys.modules for m in MODULES)


def test_list_and_a_run_select_the_same_plugins(
    installed: dict[str, FakeEntryPoint],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `list` calls available is exactly what the kernel loads for `--check`, under every switch."""
    config = tmp_path / "run.yaml"
    for text, autoload_off in [
        ("{}\n", False),
        ("{}\n", True),
        ("plugins: [alpha, gamma]\n", True),
        ("disable_plugins: [gamma, broken, future]\n", False),
    ]:
        config.write_text(text, encoding="utf-8")
        if autoload_off:
            monkeypatch.setenv(AUTOLOAD_ENV, "yes")
        else:
            monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
        listed = _rows(_run(capsys, "plugins", "list", "--json", "--config", str(config))[1])
        checked = _rows(_run(capsys, "plugins", "list", "--json", "--check", "--config", str(config))[1])
        available = {n for n, r in listed.items() if r["status"] == "available"}
        tried = {n for n, r in checked.items() if r["status"] in ("loaded", "failed")}
        assert available == tried, (text, autoload_off)
        for name in set(listed) - available:
            assert checked[name]["status"] == "disabled" and checked[name]["reason"] == listed[name]["reason"]


def test_list_reports_a_name_claimed_by_two_distributions(modules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two distributions advertising one plugin name: both rows fail with the kernel's message, nothing imported."""
    eps = [
        _source_entry_point("twin", "cli_twin_a:P", distribution="apt-plugin-twin", version="1.0"),
        _source_entry_point("twin", "cli_twin_b:P", distribution="twin-fork", version="2.0"),
    ]
    with fake_entry_points(*eps):
        rows = json.loads(_run(capsys, "plugins", "list", "--json")[1])
        code, out, _ = _run(capsys, "plugins", "doctor", "--json")
    assert [(r["distribution"], r["status"]) for r in rows] == [("apt-plugin-twin", "failed"), ("twin-fork", "failed")]
    assert rows[0]["reason"] == (
        "plugin name 'twin' is provided by several distributions (apt-plugin-twin 1.0, twin-fork 2.0); "
        "uninstall all but one"
    )
    assert code == 1 and json.loads(out)["failed"] == ["twin"]


def test_list_table_fits_80_columns_and_wide_shows_everything(
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Long summaries wrap and long names are cut to fit 80 columns; `--wide` cuts nothing and adds the target."""
    summary = "A plugin whose distribution summary is much longer than the eighty columns of a terminal, " * 2
    eps = [
        _source_entry_point(
            "tokens_with_a_rather_long_plugin_name",
            "cli_long_module_name.sub_module:LongPluginClass",
            distribution="apt-plugin-tokens-with-a-rather-long-plugin-name",
            version="10.20.30.dev4567",
            summary=summary.strip(),
        ),
        _source_entry_point("short", "cli_short:P", distribution="apt-plugin-short", version="0.1"),
    ]
    with fake_entry_points(*eps):
        code, out, _ = _run(capsys, "plugins", "list")
        wide = _run(capsys, "plugins", "list", "--wide")[1]
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert lines[0].split() == ["NAME", "VERSION", "DISTRIBUTION", "STATUS"]
    assert lines[1].split() == ["short", "0.1", "apt-plugin-short", "available"]
    assert lines[2].split() == ["tokens_with_a_rathe…", "10.20.30.de…", "apt-plugin-tokens-with-a-ra…", "available"]
    assert " ".join(line.strip() for line in lines[3:]) == summary.strip()
    header, _, first = wide.splitlines()[:3]
    assert header.split() == ["NAME", "VERSION", "DISTRIBUTION", "STATUS", "SUMMARY", "TARGET"]
    assert first.startswith("tokens_with_a_rather_long_plugin_name  10.20.30.dev4567  apt-plugin-tokens-with")
    assert summary.strip() in first and first.endswith("cli_long_module_name.sub_module:LongPluginClass")


def test_list_table_notes_why_a_plugin_is_disabled(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Under the table, each plugin that is not available gets a line with the reason."""
    config = tmp_path / "run.yaml"
    config.write_text("disable_plugins: [gamma]\n", encoding="utf-8")
    out = _run(capsys, "plugins", "list", "--config", str(config))[1]
    assert "\n\n  gamma: disabled: listed in disable_plugins\n" in out
    assert "    Alpha: the first plugin.\n" in out


def test_list_check_loads_through_the_kernel(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check` imports and reports loaded / failed with the kernel's cause, and what the kernel loaded."""
    rows = _rows(_run(capsys, "plugins", "list", "--json", "--check")[1])
    assert {n: r["status"] for n, r in rows.items()} == {
        "alpha": "loaded",
        "beta": "loaded",
        "gamma": "loaded",
        "broken": "failed",
        "future": "failed",
    }
    assert "No module named 'torch_scatter'" in rows["broken"]["reason"]
    assert rows["broken"]["failure"]["stage"] == "import"
    assert "supports plugin API >=2,<3 but apt-core provides plugin API 1.0" in rows["future"]["reason"]
    alpha = rows["alpha"]["plugin"]
    assert (alpha["priority"], alpha["providers"], alpha["critical"]) == (5, ["ffn:alpha"], False)
    assert alpha["hooks"] == ["on_step_end", "on_train_begin"]
    assert alpha["file"].endswith("cli_alpha.py")
    assert rows["beta"]["plugin"]["requires"] == ["alpha>=1.0"]

    out = _run(capsys, "plugins", "list", "--check")[1]
    assert out.splitlines()[1].split() == ["alpha", "1.2.0", "apt-plugin-alpha", "loaded"]
    assert "  future: failed: plugin 'future' (apt-plugin-future 3.0.0) supports plugin API" in out


def test_list_check_fails_a_plugin_whose_requirement_is_not_selected(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A requirement left out by the config fails its dependent under --check, as in a run."""
    config = tmp_path / "run.yaml"
    config.write_text("plugins: [beta]\n", encoding="utf-8")
    rows = _rows(_run(capsys, "plugins", "list", "--json", "--check", "--config", str(config))[1])
    assert rows["beta"]["status"] == "failed" and rows["beta"]["failure"]["stage"] == "requires"
    assert "requires 'alpha', which is installed but not selected" in rows["beta"]["reason"]
    assert rows["alpha"]["status"] == "disabled"


def test_list_with_nothing_installed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No plugin installed is a friendly line, not an empty table."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with fake_entry_points():
        code, out, _ = _run(capsys, "plugins", "list")
    assert code == 0 and out.startswith("no APT plugins installed")


def test_list_imports_neither_torch_nor_plugin_code(tmp_path: Path) -> None:
    """In a fresh interpreter, `apt plugins list` (JSON, table, wide) imports no torch and no plugin module.

    The entry points are the really installed plugins plus one whose module exits if imported.
    """
    (tmp_path / "cli_bomb.py").write_text("raise SystemExit('imported!')\n", encoding="utf-8")
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from apt.cli import main
        from apt.testing import FakeEntryPoint, fake_entry_points
        bomb = FakeEntryPoint("bomb", None, value="cli_bomb:Bomb")
        out = io.StringIO()
        with fake_entry_points(bomb, keep_installed=True), contextlib.redirect_stdout(out):
            codes = [main(["plugins", "list", "--json"])]
            names = sorted(r["name"] for r in json.loads(out.getvalue()))
            codes += [main(["plugins", "list"]), main(["plugins", "list", "--wide"])]
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "apt_plugin_", "cli_")))
        print(json.dumps({"codes": codes, "imported": bad, "names": names}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["codes"] == [0, 0, 0] and result["imported"] == []
    assert "bomb" in result["names"]


# --- info ------------------------------------------------------------------------------


def test_info_describes_one_plugin_through_the_kernel(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """`info NAME` prints metadata, origin and what loading it showed; `--json` the same as a dict."""
    code, out, _ = _run(capsys, "plugins", "info", "beta")
    assert code == 0
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert fields["name"] == "beta" and fields["distribution"] == "apt-plugin-beta"
    assert fields["entry point"] == "cli_beta:BetaPlugin"
    assert fields["runs load it"] == "yes" and fields["status"] == "loaded"
    assert fields["requires"] == "alpha>=1.0" and fields["priority"] == "50"
    assert fields["file"].endswith("cli_beta.py")
    assert max(len(line) for line in out.splitlines() if not line.startswith("file:")) <= 80
    data = json.loads(_run(capsys, "plugins", "info", "alpha", "--json")[1])
    assert data["plugin"]["providers"] == ["ffn:alpha"] and data["status"] == "loaded"
    assert data["summary"] == "Alpha: the first plugin."


def test_info_loads_a_disabled_plugin_and_says_runs_would_not(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A plugin the config turns off is still described, with the reason runs leave it out."""
    config = tmp_path / "run.yaml"
    config.write_text("disable_plugins: [gamma]\n", encoding="utf-8")
    data = json.loads(_run(capsys, "plugins", "info", "gamma", "--json", "--config", str(config))[1])
    assert data["selected"] is False and data["selection"] == "listed in disable_plugins"
    assert data["status"] == "loaded" and data["plugin"]["version"] == "2.0.0"


def test_info_of_a_plugin_that_fails_shows_the_stage_and_cause(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """`info` of a plugin whose import fails exits 0 and prints the kernel's stage and cause."""
    code, out, _ = _run(capsys, "plugins", "info", "broken")
    assert code == 0
    assert "status:         failed: plugin 'broken' (apt-plugin-broken 0.1.0): importing" in out
    assert "stage:          import" in out


def test_info_unknown_name_is_a_usage_error(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown name exits 2 with one line naming the installed plugins and the closest one."""
    code, _, err = _run(capsys, "plugins", "info", "alpah")
    assert code == 2
    assert err.strip() == (
        "apt: error: no installed plugin is named 'alpah' (did you mean 'alpha'?); "
        "installed: alpha, beta, broken, future, gamma (see `apt plugins list`)"
    )
    assert not any(m in sys.modules for m in MODULES)


def test_check_reports_what_the_kernel_computed(modules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Computed attributes, @hook handlers and a module-only entry point: `--check` and `info` show the kernel's values."""
    _write(
        modules,
        {
            "cli_computed": """
                from apt.plugins import Plugin, hook

                class Computed(Plugin):
                    name = "computed"
                    description = " ".join(["Computed", "description"])
                    api_version = ">=1," + "<3"
                    version = ".".join(["4", "5", "6"])

                    @hook("on_epoch_start", priority=3)
                    def starting(self, **kwargs):
                        pass
            """,
        },
    )
    ep = FakeEntryPoint("computed", None, value="cli_computed", distribution="apt-plugin-computed", version="0.9")
    with fake_entry_points(ep):
        listed = _rows(_run(capsys, "plugins", "list", "--json")[1])["computed"]
        checked = _rows(_run(capsys, "plugins", "list", "--json", "--check")[1])["computed"]
        info = _run(capsys, "plugins", "info", "computed", "--check")[1]
    assert listed["version"] == "0.9" and listed["plugin"] is None
    plugin = checked["plugin"]
    assert (plugin["version"], plugin["description"], plugin["api_version"]) == (
        "4.5.6",
        "Computed description",
        ">=1,<3",
    )
    assert plugin["hooks"] == ["on_epoch_begin"]
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines())}
    assert (fields["version"], fields["dist. version"], fields["hooks"]) == ("4.5.6", "0.9", "on_epoch_begin")


# --- doctor ----------------------------------------------------------------------------


def test_doctor_reports_failures_and_exits_1(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
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
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin whose requirement fails is reported too, with the requirement chain."""
    _write(
        modules,
        {
            "cli_needs_broken": "from apt.plugins import Plugin\nclass NeedsBroken(Plugin):\n"
            "    name = 'needs'\n    requires = ('broken',)\n",
            "cli_broken": MODULES["cli_broken"],
        },
    )
    eps = [
        _source_entry_point("broken", "cli_broken:BrokenPlugin", distribution="apt-plugin-broken"),
        _source_entry_point("needs", "cli_needs_broken:NeedsBroken", distribution="apt-plugin-needs"),
    ]
    with fake_entry_points(*eps):
        code, out, _ = _run(capsys, "plugins", "doctor", "--json")
    assert code == 1
    needs = next(p for p in json.loads(out)["plugins"] if p["name"] == "needs")
    assert needs["failure"]["stage"] == "requires"
    assert needs["failure"]["chain"] == ["needs", "broken"]


def test_doctor_passes_when_every_plugin_loads(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str]
) -> None:
    """With only plugins that load installed, the doctor exits 0."""
    with fake_entry_points(installed["alpha"], installed["gamma"]):
        code, out, _ = _run(capsys, "plugins", "doctor")
    assert code == 0
    assert out.rstrip().endswith("2 of 2 plugins OK")


def test_doctor_bad_config_section_is_that_plugins_failure(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str], modules: Path
) -> None:
    """A config error in one plugin's section fails that plugin, named with the key; the rest still load."""
    _write(
        modules,
        {
            "cli_typed": """
                from pydantic import BaseModel, ConfigDict, Field
                from apt.plugins import Plugin

                class TypedConfig(BaseModel):
                    model_config = ConfigDict(extra="forbid")
                    rate: float = Field(0.5, gt=0)

                class TypedPlugin(Plugin):
                    name = "typed"
                    config_model = TypedConfig
            """
        },
    )
    config = modules / "run.yaml"
    config.write_text("typed: {rate: -1}\n", encoding="utf-8")
    typed = _source_entry_point("typed", "cli_typed:TypedPlugin", distribution="apt-plugin-typed")
    with fake_entry_points(installed["alpha"], typed):
        code, out, _ = _run(capsys, "plugins", "doctor", "--json", "--config", str(config))
    assert code == 1
    report = json.loads(out)
    failure = next(p for p in report["plugins"] if p["name"] == "typed")["failure"]
    assert failure["stage"] == "config" and "typed.rate" in failure["error"]
    assert next(p for p in report["plugins"] if p["name"] == "alpha")["result"] == "loaded"


# --- order -----------------------------------------------------------------------------


def test_order_prints_each_event_with_the_reason(
    installed: dict[str, FakeEntryPoint], capsys: pytest.CaptureFixture[str], tmp_path: Path
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


def test_order_breaks_ties_by_name(modules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Equal priorities run in name order, whatever order the entry points were found in, and say so."""
    _write(
        modules,
        {
            f"cli_tie_{name}": f"from apt.plugins import Plugin\nclass P(Plugin):\n    name = {name!r}\n"
            "    def on_step_end(self, **kwargs):\n        pass\n"
            for name in ("zulu", "mike", "alfa")
        },
    )
    eps = [_source_entry_point(n, f"cli_tie_{n}:P") for n in ("zulu", "mike", "alfa")]
    with fake_entry_points(*eps):
        report = json.loads(_run(capsys, "plugins", "order", "--json")[1])
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


# --- order: ties explained by what decided them --------------------------------------------


def test_order_explains_a_tie_by_the_resolved_plugin_position(
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tie broken by a requirement or by plugin priority is explained so, not as 'by name'."""
    _write(
        modules,
        {
            "cli_ord": """
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
        },
    )
    eps = [_source_entry_point(n, f"cli_ord:{n.upper()}") for n in ("a", "m", "z", "hb", "ha", "hc")]
    with fake_entry_points(*eps):
        report = json.loads(_run(capsys, "plugins", "order", "--json")[1])
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


def test_order_explains_after_and_before_by_the_kernels_rule(modules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``after`` and ``before`` order plugins as ``requires`` does (the kernel's order_edges), and say so."""
    _write(
        modules,
        {
            "cli_ab": """
            from apt.plugins import Plugin

            class Amy(Plugin):
                name = "amy"
                def on_step_end(self, **kw): pass
            class Zed(Plugin):
                name = "zed"
                before = ("amy",)
                def on_step_end(self, **kw): pass
            class Bob(Plugin):
                name = "bob"
                priority = 7
                after = ("cat",)
                def on_step_end(self, **kw): pass
            class Cat(Plugin):
                name = "cat"
                def on_step_end(self, **kw): pass
            """
        },
    )
    eps = [_source_entry_point(n, f"cli_ab:{n.title()}") for n in ("amy", "zed", "bob", "cat")]
    with fake_entry_points(*eps):
        report = json.loads(_run(capsys, "plugins", "order", "--json")[1])
    assert report["plugins"] == ["cat", "bob", "zed", "amy"]
    rows = report["order"]["on_step_end"]
    assert [(r["plugin"], r["priority"]) for r in rows] == [("cat", 7), ("bob", 7), ("zed", 0), ("amy", 0)]
    assert [r["reason"] for r in rows] == [
        "priority 7 (own 0, raised because bob runs after it)",
        "priority 7; after cat (after)",
        "priority 0",
        "priority 0; after zed (zed's before)",
    ]
