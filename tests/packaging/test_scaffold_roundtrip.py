"""The scaffold round trip: `apt plugin new` → pip install → discovered → its own tests pass → uninstalled."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apt.cli import main


def _apt(venv: Any, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv.python), "-m", "apt", *args], cwd=cwd, env=venv.env(), capture_output=True, text=True, timeout=240
    )


def test_scaffolded_plugin_installs_is_discovered_and_its_tests_pass(
    tmp_path: Path, make_venv: Callable[..., Any]
) -> None:
    """A freshly scaffolded package is a working plugin once pip-installed, and is gone once uninstalled."""
    assert main(["plugin", "new", "roundtrip_demo", "--dir", str(tmp_path / "src")]) == 0
    project = tmp_path / "src" / "apt-plugin-roundtrip-demo"
    # a venv that sees this interpreter's packages (apt-core, torch, pytest, hatchling) but has
    # its own site-packages, so that installing and uninstalling the plugin stays in there
    venv = make_venv("roundtrip-venv", inherit=True)
    venv.pip("install", "-q", "--no-deps", "--no-build-isolation", project)
    work = tmp_path / "work"  # not the project folder: only the installed copy is importable
    work.mkdir()

    listed = _apt(venv, "plugins", "list", "--json", cwd=work)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    row = rows["roundtrip_demo"]
    assert row["distribution"] == "apt-plugin-roundtrip-demo" and row["version"] == "0.1.0"
    assert row["status"] == "available" and row["target"] == "apt_plugin_roundtrip_demo:RoundtripDemoPlugin"
    assert row["summary"].startswith("An APT plugin: ")  # the scaffold's pyproject description
    # `info` imports it through the kernel: what the loaded plugin registers
    info = _apt(venv, "plugins", "info", "roundtrip_demo", "--json", cwd=work)
    assert info.returncode == 0, info.stderr
    plugin = json.loads(info.stdout)["plugin"]
    assert plugin["providers"] == ["ffn:roundtrip_demo_relu2"]
    assert plugin["hooks"] == ["on_load_checkpoint", "on_save_checkpoint", "on_step_end"]
    # imported from the installed copy in the venv, not from the project folder
    assert plugin["file"].startswith(str(venv.path)), plugin["file"]

    tests = subprocess.run(
        [str(venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        cwd=project,
        env=venv.env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout, tests.stdout

    venv.pip("uninstall", "-y", "-q", "apt-plugin-roundtrip-demo")
    after = _apt(venv, "plugins", "list", "--json", cwd=work)
    assert after.returncode == 0, after.stderr
    assert "roundtrip_demo" not in {row["name"] for row in json.loads(after.stdout)}
