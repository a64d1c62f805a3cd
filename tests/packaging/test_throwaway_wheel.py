"""A plugin distribution built as a real wheel, installed beside apt-core into a fresh venv (issue 2).

Shows the whole path a third-party plugin takes: its ``apt.plugins`` entry points are
discovered, its pydantic config is validated, two plugins are ordered by ``requires``
(against their priorities), their hooks fire through ``PluginManager.trigger_event``, and
after ``pip uninstall`` the plugin is gone. No torch is installed in that venv, which also
proves that discovery and dispatch do not need it.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any


PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "apt-plugin-throwaway"
version = "0.3.0"
description = "A throwaway APT plugin built by the test suite."
requires-python = ">=3.10"
dependencies = ["apt-core>=1,<2"]

[project.entry-points."apt.plugins"]
throwaway = "apt_plugin_throwaway:ThrowawayPlugin"
throwaway_after = "apt_plugin_throwaway._after:AfterPlugin"

[tool.hatch.build.targets.wheel]
packages = ["src/apt_plugin_throwaway"]
"""

INIT = '''\
"""A throwaway plugin: validated config, one hook, a call log the test reads back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from apt.plugins import Plugin

CALLS: list[tuple[str, str, dict]] = []


class ThrowawayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0, description="Multiplies the step in the metric.")


class ThrowawayPlugin(Plugin):
    name = "throwaway"
    version = "0.3.0"
    description = "Counts steps."
    priority = 0
    critical = False
    config_model = ThrowawayConfig

    def on_step_end(self, step, loss, **kwargs):
        CALLS.append(("throwaway", "on_step_end", {"step": step, "loss": loss}))
        return {"throwaway/scaled_step": self.config.scale * step}
'''

AFTER = '''\
"""A second plugin in the same distribution; it requires the first, so it runs after it."""

from __future__ import annotations

from apt.plugins import Plugin

from apt_plugin_throwaway import CALLS


class AfterPlugin(Plugin):
    name = "throwaway_after"
    version = "0.3.0"
    requires = ("throwaway>=0.3",)
    priority = 100  # higher than throwaway's, yet it must run after it: requires wins
    critical = False

    def on_step_end(self, step, **kwargs):
        CALLS.append(("throwaway_after", "on_step_end", {"step": step}))
        return {"throwaway_after/seen": 1.0}
'''

INSTALLED = """
import json, sys
from apt.core import APTConfig
from apt.errors import ConfigError
from apt.plugins import PluginManager, discover_entry_points

out = {}
eps = {ep.name: ep for ep in discover_entry_points()}
out["discovered"] = {n: [ep.value, ep.distribution, ep.version] for n, ep in sorted(eps.items())}
out["plugin_modules_imported_by_discovery"] = sorted(m for m in sys.modules if m.startswith("apt_plugin_"))

# validated: a bad value in the plugin's own config section is rejected with the key's path
try:
    PluginManager().load_from_config(APTConfig(plugins=["throwaway"], throwaway={"scale": -1.0}))
    out["invalid"] = None
except ConfigError as exc:
    out["invalid"] = str(exc)

# ordered and firing: every installed plugin loads (no `plugins:` list)
pm = PluginManager()
pm.load_from_config(APTConfig(throwaway={"scale": 2.0}))
pm.setup_all()
import apt_plugin_throwaway
results = pm.trigger_event("on_step_end", step=3, loss=0.5)
out["loaded"] = pm.list_loaded()  # in resolved order
out["calls"] = apt_plugin_throwaway.CALLS
out["results"] = [r for r in results if r is not None]
pm.teardown_all()
out["torch_imported"] = "torch" in sys.modules
print(json.dumps(out))
"""

UNINSTALLED = """
import json, sys
from apt.core import APTConfig
from apt.errors import PluginNotFoundError
from apt.plugins import PluginManager, discover_entry_points

out = {"discovered": sorted(ep.name for ep in discover_entry_points())}
try:
    PluginManager().load_from_config(APTConfig(plugins=["throwaway"]))
    out["error"] = None
except PluginNotFoundError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def _write_plugin(root: Path) -> Path:
    project = root / "apt-plugin-throwaway"
    pkg = project / "src" / "apt_plugin_throwaway"
    pkg.mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    (pkg / "__init__.py").write_text(INIT, encoding="utf-8")
    (pkg / "_after.py").write_text(AFTER, encoding="utf-8")
    return project


def test_throwaway_plugin_wheel_in_a_fresh_venv(
    tmp_path: Path, core_venv: Any, build_wheel: Callable[[Path, Path], Path]
) -> None:
    """Discovered, validated, ordered and firing from an installed wheel; gone after pip uninstall."""
    wheel = build_wheel(_write_plugin(tmp_path / "src"), tmp_path / "dist")
    assert wheel.name.startswith("apt_plugin_throwaway-0.3.0-")
    core_venv.install(wheel)
    workdir = tmp_path / "work"  # outside the source tree: only installed code is importable
    workdir.mkdir()

    out = json.loads(core_venv.python_script(INSTALLED, workdir).strip().splitlines()[-1])

    # discovered: both entry points, with the distribution that provides them, without importing it
    assert out["discovered"] == {
        "throwaway": ["apt_plugin_throwaway:ThrowawayPlugin", "apt-plugin-throwaway", "0.3.0"],
        "throwaway_after": ["apt_plugin_throwaway._after:AfterPlugin", "apt-plugin-throwaway", "0.3.0"],
    }
    assert out["plugin_modules_imported_by_discovery"] == []
    # validated: the message names the key path
    assert out["invalid"] is not None and "config key 'throwaway.scale'" in out["invalid"], out["invalid"]
    assert "greater than 0" in out["invalid"] and "-1.0" in out["invalid"]
    # ordered: requires beats priority, and both hooks fired with the keyword arguments
    assert out["loaded"] == ["throwaway", "throwaway_after"]
    assert [c[0] for c in out["calls"]] == ["throwaway", "throwaway_after"]
    assert out["calls"][0][2] == {"step": 3, "loss": 0.5}
    assert {"throwaway/scaled_step": 6.0} in out["results"]
    assert {"throwaway_after/seen": 1.0} in out["results"]
    assert out["torch_imported"] is False

    # the `apt` command works without torch: listing reads metadata, and the scaffold's
    # templates ship inside the apt-core wheel
    listed = json.loads(core_venv.apt("plugins", "list", "--json", cwd=workdir))
    assert {r["name"]: r["status"] for r in listed} == {"throwaway": "available", "throwaway_after": "available"}
    core_venv.apt("plugin", "new", "shipped", "--dir", workdir, cwd=workdir)
    assert (workdir / "apt-plugin-shipped" / "src" / "apt_plugin_shipped" / "_plugin.py").is_file()

    core_venv.pip("uninstall", "-y", "-q", "apt-plugin-throwaway")
    gone = json.loads(core_venv.python_script(UNINSTALLED, workdir).strip().splitlines()[-1])
    assert "throwaway" not in gone["discovered"] and "throwaway_after" not in gone["discovered"]
    assert gone["error"] is not None and "throwaway" in gone["error"]


def test_scripts_are_plain_python() -> None:
    """The scripts run in the venv compile (guards against a broken f-string or indentation)."""
    for code in (INSTALLED, UNINSTALLED, INIT, AFTER):
        compile(textwrap.dedent(code), "<script>", "exec")
