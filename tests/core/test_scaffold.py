"""`apt plugin new`: names, the files written, and a generated plugin that the kernel accepts.

The full round trip (pip install into a venv, discovery, the generated tests passing) is
in tests/packaging/test_scaffold_roundtrip.py.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from apt.cli import main
from apt.cli._scaffold import ScaffoldNames
from apt.cli._scaffold import scaffold
from apt.errors import ConfigError
from apt.errors import UsageError
from apt.plugins import PluginManager
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points
from apt.testing import tiny_config


@pytest.mark.parametrize(
    ("raw", "name", "dist", "package", "cls"),
    [
        (
            "token_dropout",
            "token_dropout",
            "apt-plugin-token-dropout",
            "apt_plugin_token_dropout",
            "TokenDropoutPlugin",
        ),
        (
            "Token-Dropout",
            "token_dropout",
            "apt-plugin-token-dropout",
            "apt_plugin_token_dropout",
            "TokenDropoutPlugin",
        ),
        ("apt-plugin-ema", "ema", "apt-plugin-ema", "apt_plugin_ema", "EmaPlugin"),
        ("my_plugin", "my_plugin", "apt-plugin-my-plugin", "apt_plugin_my_plugin", "MyPlugin"),
        ("x2", "x2", "apt-plugin-x2", "apt_plugin_x2", "X2Plugin"),
    ],
)
def test_names_are_derived_from_the_plugin_name(raw: str, name: str, dist: str, package: str, cls: str) -> None:
    """One plugin name gives the distribution, import package and class names."""
    names = ScaffoldNames.from_name(raw)
    assert (names.name, names.dist, names.package, names.cls) == (name, dist, package, cls)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2fast", "plugin name '2fast' is not valid: use lowercase letters"),
        ("bad name", "plugin name 'bad name' is not valid"),
        ("trailing_", "plugin name 'trailing_' is not valid"),
        ("", "plugin name '' is not valid"),
        ("class", "plugin name 'class' is a Python keyword"),
        ("training", "plugin name 'training' is a core config section"),
        ("plugins", "is a core config section"),
    ],
)
def test_bad_names_are_usage_errors(raw: str, message: str) -> None:
    """A name that cannot be a plugin name (config section, identifier) is refused with the reason."""
    with pytest.raises(UsageError, match=message):
        ScaffoldNames.from_name(raw)


def test_cli_writes_the_package_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`apt plugin new NAME --dir DIR` writes every file; running it again is a one-line error, exit 2."""
    assert main(["plugin", "new", "demo_one", "--dir", str(tmp_path)]) == 0
    project = tmp_path / "apt-plugin-demo-one"
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/apt_plugin_demo_one/__init__.py",
        "src/apt_plugin_demo_one/_ffn.py",
        "src/apt_plugin_demo_one/_plugin.py",
        "src/apt_plugin_demo_one/py.typed",
        "tests/test_demo_one.py",
    ]
    assert (
        f"created apt-plugin-demo-one (plugin 'demo_one', class DemoOnePlugin) in {project}" in capsys.readouterr().out
    )

    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == "apt-plugin-demo-one"
    assert pyproject["project"]["entry-points"]["apt.plugins"] == {"demo_one": "apt_plugin_demo_one:DemoOnePlugin"}
    assert "apt-core>=1.0,<2" in pyproject["project"]["dependencies"]
    for path in project.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")  # every generated module is valid Python
    assert "{{" not in "".join(p.read_text(encoding="utf-8") for p in project.rglob("*") if p.is_file())

    assert main(["plugin", "new", "demo_one", "--dir", str(tmp_path)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_cli_warns_when_the_name_is_taken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Scaffolding a plugin named like an installed one works, with a warning naming that distribution."""
    with fake_entry_points(FakeEntryPoint("taken", object, distribution="apt-plugin-taken", version="2.0.0")):
        assert main(["plugin", "new", "taken", "--dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: plugin name 'taken' is already used by the installed distribution apt-plugin-taken 2.0.0" in err


def test_generated_plugin_is_listed_and_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apt plugins list` shows a scaffolded plugin without importing it; `info` describes it through the kernel."""
    project = scaffold(ScaffoldNames.from_name("demo_listed"), tmp_path)
    monkeypatch.syspath_prepend(str(project / "src"))
    importlib.invalidate_caches()
    ep = FakeEntryPoint(
        "demo_listed",
        None,
        value="apt_plugin_demo_listed:DemoListedPlugin",
        distribution="apt-plugin-demo-listed",
        version="0.1.0",
        summary="demo",
    )
    try:
        with fake_entry_points(ep):
            assert main(["plugins", "list", "--json"]) == 0
            [row] = json.loads(capsys.readouterr().out)
            assert "apt_plugin_demo_listed" not in sys.modules and ep.loads == 0
            assert main(["plugins", "info", "demo_listed", "--json"]) == 0
            info = json.loads(capsys.readouterr().out)
    finally:
        for name in [m for m in sys.modules if m.startswith("apt_plugin_demo_listed")]:
            sys.modules.pop(name)
    assert row["target"] == "apt_plugin_demo_listed:DemoListedPlugin" and row["status"] == "available"
    assert info["status"] == "loaded"
    plugin = info["plugin"]
    assert (plugin["name"], plugin["version"], plugin["api_version"]) == ("demo_listed", "0.1.0", ">=1,<2")
    assert plugin["providers"] == ["ffn:demo_listed_relu2"] and plugin["critical"] is False
    assert plugin["hooks"] == ["on_load_checkpoint", "on_save_checkpoint", "on_step_end"]
    assert plugin["file"].startswith(str(project / "src"))


def test_generated_plugin_loads_validates_and_registers_its_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel accepts the generated class: entry point, config validation, provider, hook."""
    project = scaffold(ScaffoldNames.from_name("demo_kernel"), tmp_path)
    monkeypatch.syspath_prepend(str(project / "src"))
    module = importlib.import_module("apt_plugin_demo_kernel")
    cls = module.DemoKernelPlugin
    with fake_entry_points(FakeEntryPoint("demo_kernel", cls, distribution="apt-plugin-demo-kernel")):
        pm = PluginManager()
        with pytest.raises(ConfigError, match=r"demo_kernel\.report_every"):
            pm.load_from_config(tiny_config(plugins=None, demo_kernel={"report_every": -1}))
        pm = PluginManager()
        [plugin] = pm.load_from_config(tiny_config(plugins=None, demo_kernel={"report_every": 2}))
    pm.setup_all()
    assert pm.registry.get_info("ffn", "demo_kernel_relu2")["plugin"] == "demo_kernel"
    results = [pm.trigger_event("on_step_end", step=s, loss=float(s)) for s in range(4)]
    assert results == [[], [{"demo_kernel/mean_loss": 0.5}], [], [{"demo_kernel/mean_loss": 2.5}]]
    assert plugin.on_save_checkpoint() == {"loss_sum": 0.0, "loss_count": 0}
    pm.teardown_all()
    sys.modules.pop("apt_plugin_demo_kernel", None)
    for name in [m for m in sys.modules if m.startswith("apt_plugin_demo_kernel.")]:
        sys.modules.pop(name)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("raw", ["demo_lint", "test_lint"])
def test_generated_code_is_ruff_clean(raw: str, tmp_path: Path) -> None:
    """The generated package passes ruff check and ruff format with its own settings (whatever the name)."""
    project = scaffold(ScaffoldNames.from_name(raw), tmp_path)
    ruff = shutil.which("ruff")
    assert ruff is not None
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([ruff, *args], cwd=project, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_tests_pass_for_a_name_pytest_would_collect(tmp_path: Path) -> None:
    """A plugin named `test…` gets a class `Test…Plugin`; its generated tests still pass (no collection warning).

    The generated pytest config turns warnings into errors, and pytest warns about a
    `Test*` class with an __init__ that a test module imports.
    """
    names = ScaffoldNames.from_name("test_time_aug")
    assert names.cls == "TestTimeAugPlugin"
    project = scaffold(names, tmp_path)
    # the generated pytest config (filterwarnings = error, pythonpath = src) applies: run from the project
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 passed" in proc.stdout
