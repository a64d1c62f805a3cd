"""docs/hook_reference.md is generated from apt/plugins/hookspecs.py and must be current."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES


DOCS = Path(__file__).resolve().parents[2] / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hook_reference", DOCS / "gen_hook_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_current() -> None:
    """The committed page equals what the generator produces now (run docs/gen_hook_reference.py if not)."""
    generated = _generator().render()
    committed = (DOCS / "hook_reference.md").read_text(encoding="utf-8")
    assert committed == generated, "docs/hook_reference.md is stale: run `python docs/gen_hook_reference.py`"


def test_hook_reference_documents_every_event_and_argument() -> None:
    """Every event has a section, a signature and a row per argument; every alias is listed."""
    import inspect

    from apt.plugins.hookspecs import Hookspecs

    text = _generator().render()
    for name in HOOK_NAMES:
        assert f"### {name}\n" in text
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for arg in inspect.signature(getattr(Hookspecs, name)).parameters:
            if arg != "self":
                assert f"| `{arg}` |" in section, (name, arg)
        assert "**Returns:**" in section
    for alias, event in ALIASES.items():
        assert f"| `{alias}` | `{event}` |" in text


def test_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`--check` exits 1 when the file differs and 0 when it matches."""
    gen = _generator()
    target = tmp_path / "hook_reference.md"
    monkeypatch.setattr(gen, "OUTPUT", target)
    target.write_text("old\n", encoding="utf-8")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
