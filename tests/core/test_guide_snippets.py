"""docs/PLUGIN_DEVELOPMENT_GUIDE.md: the ordering, configuration and testing snippets run and show what they claim."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from apt.cli import main
from apt.plugins import AUTOLOAD_ENV
from apt.plugins import Plugin
from apt.testing import FakeEntryPoint
from apt.testing import fake_entry_points


GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "PLUGIN_DEVELOPMENT_GUIDE.md").read_text(encoding="utf-8")


def _section(number: int) -> str:
    return GUIDE.split(f"\n## {number}. ", 1)[1].split("\n## ", 1)[0]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _run_snippets(*sources: str) -> dict[str, Any]:
    """Execute guide snippets in one namespace; like the guide's readers, they have `Plugin` imported."""
    namespace: dict[str, Any] = {"Plugin": Plugin, "__name__": "guide"}
    for source in sources:
        exec(compile(source, "<guide>", "exec"), namespace)  # noqa: S102
    return namespace


def test_ordering_snippet_prints_the_documented_order(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """§7: the four plugins, installed, give exactly the `apt plugins order` output the guide shows."""
    section = _section(7)
    [classes] = [b for b in _blocks(section, "python") if "class EMAEval" in b]
    [shown] = [b for b in _blocks(section, "text") if b.startswith("$ apt plugins order")]
    command, _, expected = shown.partition("\n")
    namespace = _run_snippets(classes)
    eps = [FakeEntryPoint(cls.name, cls) for cls in (namespace[n] for n in ("EMA", "EMAEval", "Logger", "Audit"))]
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    with fake_entry_points(*eps):
        code = main(command.removeprefix("$ apt ").split())
    out = capsys.readouterr().out
    assert code == 0
    assert out == expected


def test_testing_snippet_runs_against_the_configuration_snippet() -> None:
    """§11's tests pass when run, as the guide intends, against §6's TokenDropout."""
    [plugin_source] = [b for b in _blocks(_section(6), "python") if "class TokenDropout" in b]
    [tests_source] = [b for b in _blocks(_section(11), "python") if "def test_real_short_run" in b]
    namespace = _run_snippets(plugin_source, tests_source)
    tests = sorted(name for name in namespace if name.startswith("test_"))
    assert tests == ["test_config_is_validated", "test_discovered_by_entry_point", "test_real_short_run"]
    for name in tests:
        namespace[name]()
