"""Shared fixtures: isolated plugin managers that see no installed plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from apt.core import ProviderRegistry
from apt.plugins import HookManager
from apt.plugins import PluginManager
from apt.testing._entry_points import fake_entry_points


os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the setting.

    The models in tests are tiny, so a second thread buys nothing, while on a busy machine
    an OpenMP parallel region can stall for a whole scheduler tick (~16 ms per large op).
    torch is imported only here, so kernel tests stay free of it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_installed_plugins() -> Iterator[None]:
    """Hide the really installed apt.plugins entry points from discovery."""
    with fake_entry_points():
        yield


@pytest.fixture
def pm(no_installed_plugins: None) -> PluginManager:
    """A fresh PluginManager with its own registry and hook manager, and no installed plugins."""
    return PluginManager(registry=ProviderRegistry(), hook_manager=HookManager())


@pytest.fixture
def fresh_globals(monkeypatch: pytest.MonkeyPatch, no_installed_plugins: None) -> PluginManager:
    """Replace the global plugin_manager / hook_manager / registry with fresh ones."""
    import apt.core
    import apt.plugins

    registry = ProviderRegistry()
    hm = HookManager()
    manager = PluginManager(registry=registry, hook_manager=hm)
    monkeypatch.setattr(apt.core, "registry", registry)
    monkeypatch.setattr(apt.plugins, "hook_manager", hm)
    monkeypatch.setattr(apt.plugins, "plugin_manager", manager)
    return manager
