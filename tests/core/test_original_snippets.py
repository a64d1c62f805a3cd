"""Every code snippet of the original APT_PLUGIN_SYSTEM_IMPLEMENTATION.md, run as written.

The snippets are APT's public API. Each test pastes one snippet verbatim (between the
"as written" markers) and adds only the names the snippet assumes exist (a provider
class, a handler it references) and assertions after it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apt.core import APTConfig
from apt.plugins import Plugin
from apt.plugins import PluginManager


class MyAttention:
    def __init__(self, d_model: int = 512, heads: int = 8) -> None:
        self.d_model, self.heads = d_model, heads


FlashAttentionProvider = MyAttention
TopKRouter = MyAttention


def test_plugin_base_class_example(fresh_globals: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    """Section 1: a plugin registering a provider and a hook by hand in setup()."""
    from apt.plugins import hook_manager

    # --- as written ---
    class MyPlugin(Plugin):
        def get_name(self) -> str:
            return "my_plugin"

        def get_version(self) -> str:
            return "1.0.0"

        def setup(self, registry, hook_manager):
            # Register providers
            registry.register("attention", "my_attention", MyAttention)

            # Add hooks
            hook_manager.register("on_epoch_start", self.on_epoch_start)

        def on_epoch_start(self, epoch, **kwargs):
            print(f"Epoch {epoch} started!")

    # --- end ---

    fresh_globals.register_plugin("my_plugin", MyPlugin)
    fresh_globals.load("my_plugin")
    fresh_globals.setup_all()
    fresh_globals.trigger_event("on_epoch_start", epoch=3)
    # registered by hand and found again automatically: it must run exactly once
    assert capsys.readouterr().out == "Epoch 3 started!\n"
    assert fresh_globals.registry.get_info("attention", "my_attention")["plugin"] == "my_plugin"
    assert hook_manager.list_hooks("on_epoch_start") == [
        "my_plugin:test_plugin_base_class_example.<locals>.MyPlugin.on_epoch_start"
    ]


def test_hook_manager_example(fresh_globals: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    """Section 2: module-level hook_manager with priority and an every_n_epochs condition."""
    saved: list[int] = []

    def save_checkpoint(epoch, **kwargs):
        saved.append(epoch)

    # --- as written ---
    from apt.plugins import every_n_epochs
    from apt.plugins import hook_manager

    # Simple hook
    def my_hook(epoch, **kwargs):
        print(f"Epoch {epoch}")

    hook_manager.register("on_epoch_start", my_hook, priority=10)

    # Conditional hook (every 5 epochs)
    hook_manager.register("on_epoch_end", save_checkpoint, condition=every_n_epochs(5))

    # Trigger hooks
    hook_manager.trigger("on_epoch_start", epoch=5)
    # --- end ---

    assert capsys.readouterr().out == "Epoch 5\n"
    for epoch in range(12):
        hook_manager.trigger("on_epoch_end", epoch=epoch)
    assert saved == [4, 9]  # the 5th and 10th epochs (0-based indices)
    stats = hook_manager.get_stats("on_epoch_end")["on_epoch_end"]
    assert (stats["calls"], stats["skipped"]) == (2, 10)


def test_plugin_manager_example(fresh_globals: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    """Section 3: register, load_from_config, setup_all, trigger_event, teardown_all."""
    torn_down: list[str] = []

    class MyPlugin(Plugin):
        name = "my_plugin"
        version = "1.0.0"

        def on_epoch_start(self, epoch, **kwargs):
            print(f"epoch {epoch}")

        def teardown(self):
            torn_down.append(self.get_name())

    # --- as written ---
    from apt.core import APTConfig
    from apt.plugins import plugin_manager

    # Register plugin class
    plugin_manager.register_plugin("my_plugin", MyPlugin)

    # Load from config
    config = APTConfig(plugins=["my_plugin"])
    plugin_manager.load_from_config(config)

    # Setup all plugins
    plugin_manager.setup_all()

    # Trigger events
    plugin_manager.trigger_event("on_epoch_start", epoch=1)

    # Teardown
    plugin_manager.teardown_all()
    # --- end ---

    assert capsys.readouterr().out == "epoch 1\n"
    assert torn_down == ["my_plugin"]
    assert plugin_manager.hook_manager.list_hooks("on_epoch_start") == []


def test_provider_registration_example(fresh_globals: PluginManager) -> None:
    """Integration section: super().setup() then registry.register(..., default=False)."""

    # --- as written ---
    class MyPlugin(Plugin):
        def setup(self, registry, hook_manager):
            super().setup(registry, hook_manager)

            # Register attention provider
            registry.register("attention", "flash_v2", FlashAttentionProvider, default=False)

    # --- end ---

    fresh_globals.register_plugin("myplugin", MyPlugin)
    fresh_globals.load("myplugin")
    fresh_globals.setup_all()
    info = fresh_globals.registry.get_info("attention", "flash_v2")
    assert info == {
        "kind": "attention",
        "name": "flash_v2",
        "is_default": False,
        "plugin": "myplugin",
        "version": "0.0.0",
    }
    assert fresh_globals.registry.default_name("attention") == "causal"


def test_schedule_integration_example(
    fresh_globals: PluginManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Schedule and configuration sections: the YAML file, a MoE plugin enabling itself."""
    (tmp_path / "config.yaml").write_text(
        # --- as written ---
        """
# config.yaml
plugins:
  - moe
  - align

schedules:
  enable_moe_at_epoch: 2
  enable_align_at_epoch: 3
"""
        # --- end ---
    )
    monkeypatch.chdir(tmp_path)

    # --- as written ---
    class MoEPlugin(Plugin):
        def on_epoch_begin(self, epoch, schedule=None, **kwargs):
            if schedule and schedule.should_enable_plugin("moe", epoch=epoch):
                self.enable()
                print(f"MoE enabled at epoch {epoch}")

    # --- end ---

    class AlignPlugin(Plugin):
        name = "align"

    from apt.plugins import plugin_manager

    plugin_manager.register_plugin("moe", MoEPlugin)
    plugin_manager.register_plugin("align", AlignPlugin)

    # --- as written ---
    # Load config with plugins
    config = APTConfig.from_yaml("config.yaml")

    # Load plugins from config
    plugin_manager.load_from_config(config)
    plugin_manager.setup_all()

    # Plugins are now active!
    # --- end ---

    assert plugin_manager.list_loaded() == ["align", "moe"]
    moe, align = plugin_manager.get_plugin("moe"), plugin_manager.get_plugin("align")
    assert not moe.is_enabled() and not align.is_enabled()  # waiting for their epochs
    for epoch in range(4):
        plugin_manager.apply_schedule(epoch=epoch)
        plugin_manager.trigger_event("on_epoch_begin", epoch=epoch, schedule=plugin_manager.schedule)
    assert moe.is_enabled() and align.is_enabled()
    assert capsys.readouterr().out == "MoE enabled at epoch 2\nMoE enabled at epoch 3\n"


def test_usage_patterns(fresh_globals: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage patterns 1-3: logging, plugin with provider, early stopping with a dict config."""

    # --- as written ---
    class LoggingPlugin(Plugin):
        def get_name(self) -> str:
            return "logging"

        def get_version(self) -> str:
            return "1.0.0"

        def on_epoch_end(self, epoch, metrics=None, **kwargs):
            if metrics:
                print(f"Epoch {epoch}: {metrics}")

    class MoEPlugin(Plugin):
        def get_name(self) -> str:
            return "moe"

        def get_version(self) -> str:
            return "1.0.0"

        def setup(self, registry, hook_manager):
            super().setup(registry, hook_manager)

            # Register router provider
            registry.register("router", "topk", TopKRouter, default=True)

        def on_step_end(self, step, **kwargs):
            # MoE-specific logging
            pass

    class EarlyStoppingPlugin(Plugin):
        def __init__(self, config=None):
            super().__init__(config)
            self.patience = config.get("patience", 5)
            self.wait = 0
            self.best_loss = float("inf")

        def on_validation_end(self, metrics=None, **kwargs):
            if not metrics:
                return

            val_loss = metrics["val_loss"]
            if val_loss < self.best_loss:
                self.best_loss = val_loss
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= self.patience:
                    print("Early stopping triggered")
                    # Stop training (implementation depends on trainer)

    # --- end ---

    pm = fresh_globals
    pm.register_plugin("logging", LoggingPlugin)
    pm.register_plugin("moe", MoEPlugin)
    pm.register_plugin("early_stopping", EarlyStoppingPlugin)
    pm.load_from_config(APTConfig(plugins=["logging", "moe", "early_stopping"], early_stopping={"patience": 2}))
    pm.setup_all()
    assert pm.get_plugin("early_stopping").patience == 2
    assert pm.registry.default_name("router") == "topk"
    pm.trigger_event("on_epoch_end", epoch=0, metrics={"loss": 1.5})
    for loss in (1.0, 1.1, 1.2):
        pm.trigger_event("on_validation_end", metrics={"val_loss": loss})
    pm.trigger_event("on_step_end", step=1)
    assert capsys.readouterr().out == "Epoch 0: {'loss': 1.5}\nEarly stopping triggered\n"


def test_troubleshooting_calls(fresh_globals: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    """Troubleshooting section: list_plugins, get_name, is_enabled, is_setup, list_hooks."""

    class MyPlugin(Plugin):
        def get_name(self) -> str:
            return "my_plugin"

        def on_epoch_start(self, epoch, **kwargs):
            pass

    from apt.plugins import hook_manager
    from apt.plugins import plugin_manager

    plugin_manager.register_plugin("my_plugin", MyPlugin)
    plugin_manager.load("my_plugin")
    plugin_manager.setup_all()

    # --- as written ---
    # Check registration
    print(plugin_manager.list_plugins())

    # Verify plugin name
    plugin = MyPlugin({})
    print(plugin.get_name())  # Must match registration name

    # Check if plugin is enabled
    plugin = plugin_manager.get_plugin("my_plugin")
    print(plugin.is_enabled())  # Should be True

    # Check if plugin is setup
    print(plugin.is_setup())  # Should be True after setup_all()

    # Check hook registration
    print(hook_manager.list_hooks("on_epoch_start"))
    # --- end ---

    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["['my_plugin']", "my_plugin", "True", "True"]
    assert "MyPlugin.on_epoch_start" in lines[4]
