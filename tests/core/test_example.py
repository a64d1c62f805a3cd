"""examples/example_plugin.py runs and prints the original demo's numbered sections."""

from __future__ import annotations

import runpy
from pathlib import Path

import apt.plugins
import pytest
from apt.core import ProviderRegistry
from apt.plugins import HookManager
from apt.plugins import PluginManager


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "example_plugin.py"

SECTIONS = [
    "1. Registering plugin...",
    "2. Loading plugin...",
    "3. Setting up plugin...",
    "4. Checking providers...",
    "5. Testing provider...",
    "6. Simulating training lifecycle...",
    "7. Hook statistics:",
    "8. Teardown:",
]


def test_example_prints_the_numbered_sections_with_real_results(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every section appears in order, and each shows what the kernel actually did."""
    # The example uses the global plugin_manager / hook_manager, as the original did; give
    # it fresh ones so that it cannot leak state into other tests.
    hooks = HookManager()
    monkeypatch.setattr(apt.plugins, "hook_manager", hooks)
    monkeypatch.setattr(apt.plugins, "plugin_manager", PluginManager(registry=ProviderRegistry(), hook_manager=hooks))
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:2] == ["APT Plugin System Demo", "=" * 60]
    positions = [out.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of order"

    def section(i: int) -> str:
        end = out.index(SECTIONS[i + 1]) if i + 1 < len(SECTIONS) else len(out)
        return out[out.index(SECTIONS[i]) : end]

    assert "✓ Plugin registered" in section(0)
    assert "✓ Plugin loaded: ExamplePlugin(example, v1.0.0, enabled=True)" in section(1)
    assert "✓ Plugin setup complete" in section(2)
    assert "Registered providers: {'attention': ['example']}" in section(3)
    assert "✓ Created layer: ExampleAttention(d_model=512, heads=8)" in section(4)
    assert "✓ Forward pass: (2, 16, 512) -> (2, 16, 512)" in section(4)

    lifecycle = section(5)
    assert lifecycle.count("[example] epoch ") == 10  # 5 started + 5 ended
    assert "[example] training ended after 20 steps" in lifecycle
    # the plugin reports its metric every log_every=2 steps: steps 1, 3, ..., 19
    assert lifecycle.count("{'example/mean_loss':") == 10
    # every_n_epochs(2) runs the plain-function hook after epochs 1 and 3 only
    assert "checkpoints saved at epochs: [1, 3]" in lifecycle

    stats = section(6)
    assert "on_epoch_begin: 5 executions" in stats  # the plugin's on_epoch_start alias
    assert "on_step_end: 20 executions" in stats
    assert "on_epoch_end: 7 executions" in stats  # 5 plugin calls + 2 conditional calls
    assert "save_checkpoint: 2 calls, 3 skipped by condition, 0 errors" in stats
    assert "✓ All plugins cleaned up" in section(7)
