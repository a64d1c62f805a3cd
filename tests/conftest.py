"""Shared fixtures: isolated plugin managers that see no installed plugins."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from apt.core import ProviderRegistry
from apt.plugins import HookManager
from apt.plugins import Plugin
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
    monkeypatch.setattr(apt.plugins.hooks, "hook_manager", hm)  # the one @hook registers plain functions with
    monkeypatch.setattr(apt.plugins, "plugin_manager", manager)
    return manager


StateSaver = Callable[[str, int], tuple[type[Plugin], dict[str, Any]]]


@pytest.fixture
def state_saver() -> StateSaver:
    """``make(event, at)``: a plugin class ``saver`` that keeps a deep copy of ``trainer.state_dict()``
    when ``event`` fires at step ``at`` (epoch ``at`` for ``on_epoch_end``), and the dict that holds
    it under ``"state"``: what a checkpoint plugin saves there. Deep, as training goes on in place."""

    def make(event: str, at: int) -> tuple[type[Plugin], dict[str, Any]]:
        captured: dict[str, Any] = {}
        counter = "epoch" if event == "on_epoch_end" else "step"

        def keep(self: Plugin, trainer: Any, **kwargs: Any) -> None:
            if kwargs[counter] == at:
                captured["state"] = copy.deepcopy(trainer.state_dict())

        return type("Saver", (Plugin,), {"name": "saver", event: keep}), captured

    return make
