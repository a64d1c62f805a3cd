"""docs/PLUGIN_DEVELOPMENT_GUIDE.md: complete API reference, valid code, a first plugin that runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import apt.core
import apt.errors
import apt.plugins
import apt.testing
import pytest
from apt.core import ProviderRegistry
from apt.plugins import HOOK_NAMES
from apt.plugins import HookManager
from apt.plugins import PluginManager


DOCS = Path(__file__).resolve().parents[2] / "docs"
GUIDE = (DOCS / "PLUGIN_DEVELOPMENT_GUIDE.md").read_text(encoding="utf-8")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S)


@pytest.mark.parametrize("module", [apt.plugins, apt.core, apt.errors, apt.testing], ids=lambda m: m.__name__)
def test_api_reference_names_every_public_name(module: object) -> None:
    """Each name a public module exports is documented in the API reference section."""
    reference = GUIDE.split("## 16. API reference", 1)[1]
    section = reference.split(f"### {module.__name__}\n", 1)[1].split("\n### ", 1)[0]  # type: ignore[attr-defined]
    missing = [name for name in module.__all__ if f"`{name}" not in section]  # type: ignore[attr-defined]
    assert not missing, f"not in the guide's API reference for {module.__name__}: {missing}"  # type: ignore[attr-defined]


def test_every_event_is_in_the_hooks_table_and_the_reference_is_linked() -> None:
    """The hooks section names every event and links the generated reference, which exists."""
    hooks = GUIDE.split("## 5. Hooks and their arguments", 1)[1].split("\n## 6.", 1)[0]
    assert [e for e in HOOK_NAMES if f"`{e}" not in hooks] == []
    assert "(hook_reference.md)" in GUIDE and (DOCS / "hook_reference.md").is_file()


def test_python_blocks_are_valid_python() -> None:
    """Every Python snippet in the guide at least compiles."""
    blocks = _python_blocks()
    assert len(blocks) >= 8
    for block in blocks:
        compile(block, "<guide>", "exec")


def test_first_plugin_runs_as_written(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'smallest useful plugin' and the original-API snippet after it run unchanged."""
    hooks = HookManager()
    monkeypatch.setattr(apt.plugins, "hook_manager", hooks)
    monkeypatch.setattr(apt.plugins, "plugin_manager", PluginManager(registry=ProviderRegistry(), hook_manager=hooks))
    blocks = _python_blocks()
    plugin_block = next(b for b in blocks if "class LossPrinter" in b)
    usage_block = next(b for b in blocks if 'register_plugin("loss_printer"' in b)
    namespace: dict[str, object] = {}
    exec(compile(plugin_block, "<guide: first plugin>", "exec"), namespace)
    exec(compile(usage_block, "<guide: original API>", "exec"), namespace)
    assert capsys.readouterr().out == "step 0: loss 3.200\n"
