"""Plugin metadata, configuration validation, discovery and the package's public surface."""

from __future__ import annotations

from importlib.metadata import entry_points

import apt_plugin_align
import pytest
from apt.core import ProviderRegistry
from apt.errors import CheckpointError
from apt.errors import ConfigError
from apt.plugins import PluginManager
from apt_plugin_align import AlignConfig
from apt_plugin_align import AlignPlugin
from apt_plugin_align import StableState
from apt_plugin_align import load_stable_weights


def test_public_surface_is_sorted_and_complete() -> None:
    """__all__ is sorted (isort style: CONSTANTS, Classes, functions) and lists exactly the public names."""
    names = apt_plugin_align.__all__
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    public = {n for n in vars(apt_plugin_align) if not n.startswith("_") and n != "annotations"}
    assert public == set(apt_plugin_align.__all__)


def test_metadata_and_entry_point() -> None:
    """Name, version, providers and config model as the contract says; the entry point loads the class."""
    assert (AlignPlugin.name, AlignPlugin.version) == ("align", "1.0.0")
    assert AlignPlugin.config_model is AlignConfig
    assert tuple(AlignPlugin.providers) == ("align:bistate", "weights:stable")
    (ep,) = [e for e in entry_points(group="apt.plugins") if e.name == "align"]
    assert ep.load() is AlignPlugin


def test_setup_registers_the_providers() -> None:
    """setup() registers align:bistate (a StableState factory) and weights:stable (the file loader)."""
    pm = PluginManager(registry=ProviderRegistry())
    pm.register_plugin("align", AlignPlugin)
    pm.load("align", {})
    pm.setup_all()
    assert pm.registry.get("align", "bistate") is StableState
    assert pm.registry.get("weights", "stable") is load_stable_weights
    assert pm.registry.get_info("weights", "stable")["plugin"] == "align"


def test_defaults_are_the_originals() -> None:
    """alpha 0.35, beta 0.20, tau_align 0.15, start at epoch 1, sigmoid ramp, MT warm-up to 0.999."""
    cfg = AlignConfig()
    assert (cfg.alpha, cfg.beta, cfg.tau_align, cfg.start_epoch) == (0.35, 0.20, 0.15, 1)
    assert (cfg.ramp, cfg.ema_schedule, cfg.ema_decay) == ("sigmoid", "mt_warmup", 0.999)
    assert AlignConfig(ema_schedule="cosine").decay_end == 1.0
    assert AlignConfig(ema_schedule="linear").decay_end == 0.9999
    assert AlignConfig(alpha=0, beta=0).ema_only and not cfg.ema_only


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"alpha": -0.1}, "align.alpha"),
        ({"beta": -1}, "align.beta"),
        ({"tau_align": 0}, "align.tau_align"),
        ({"ramp": "exp"}, "align.ramp"),
        ({"ema_schedule": "power"}, "align.ema_schedule"),
        ({"ema_decay": 1.5}, "align.ema_decay"),
        ({"start_epoch": -1}, "align.start_epoch"),
        ({"tau": 0.1}, "align.tau"),
    ],
)
def test_bad_values_are_refused_with_their_key(section: dict[str, object], key: str) -> None:
    """Bad or unknown options raise ConfigError naming the dotted key, through the manager and directly."""
    pm = PluginManager(registry=ProviderRegistry())
    pm.register_plugin("align", AlignPlugin)
    with pytest.raises(ConfigError) as info:
        pm.load("align", section)
    assert info.value.key == key
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        AlignPlugin(section)


def test_decay_end_below_decay_is_refused() -> None:
    """ema_decay_end < ema_decay for a cosine/linear schedule names both values."""
    with pytest.raises(ConfigError, match=r"ema_decay_end must be >= ema_decay \(0.999\).*got 0.99"):
        AlignPlugin({"ema_schedule": "linear", "ema_decay_end": 0.99})


def test_malformed_checkpoint_state_is_refused() -> None:
    """on_load_checkpoint names what is missing instead of failing later."""
    with pytest.raises(CheckpointError, match="'tensors'"):
        AlignPlugin().on_load_checkpoint(state={"num_updates": 3})
