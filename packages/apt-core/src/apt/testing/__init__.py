"""Test helpers shipped with apt-core: fake entry points, a tiny config, a recording plugin, a tiny run."""

from __future__ import annotations

from apt.testing._entry_points import FakeEntryPoint
from apt.testing._entry_points import fake_entry_points
from apt.testing._tiny import TINY_CONFIG
from apt.testing._tiny import RecordingPlugin
from apt.testing._tiny import TinyRun
from apt.testing._tiny import run_tiny_training
from apt.testing._tiny import tiny_config


__all__ = [
    "TINY_CONFIG",
    "FakeEntryPoint",
    "RecordingPlugin",
    "TinyRun",
    "fake_entry_points",
    "run_tiny_training",
    "tiny_config",
]
