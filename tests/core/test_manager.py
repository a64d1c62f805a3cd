"""PluginManager: discovery, selection, ordering, schedules, state and fingerprints."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from apt.core import APTConfig
from apt.core import ProviderRegistry
from apt.errors import PluginDependencyError
from apt.plugins import AUTOLOAD_ENV
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.plugins import PluginTeardownError
from apt.testing._entry_points import FakeEntryPoint
from apt.testing._entry_points import fake_entry_points
from plugin_helpers import make
from plugin_helpers import manager


def test_discovery_reads_metadata_without_importing() -> None:
    eps = [
        FakeEntryPoint("moe", make("moe"), distribution="apt-plugin-moe", version="1.2.0"),
        FakeEntryPoint("align", make("align")),
    ]
    with fake_entry_points(*eps):
        pm = manager()
        assert pm.discover() == ["align", "moe"]
        assert pm.entry_point("moe").version == "1.2.0"
        assert [ep.loads for ep in eps] == [0, 0]
        pm.load_from_config(APTConfig(plugins=["moe"]))
    assert [ep.loads for ep in eps] == [1, 0]  # only the plugin that loads is imported


def test_selection_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [FakeEntryPoint(n, make(n)) for n in ("a", "b", "c")]
    with fake_entry_points(*eps):
        assert [p.get_name() for p in manager().load_from_config(APTConfig())] == ["a", "b", "c"]
        assert [p.get_name() for p in manager().load_from_config(APTConfig(plugins=["c", "a"]))] == ["a", "c"]
        assert [p.get_name() for p in manager().load_from_config(APTConfig(disable_plugins=["b"]))] == ["a", "c"]
        monkeypatch.setenv(AUTOLOAD_ENV, "1")
        assert manager().load_from_config(APTConfig()) == []
        assert [p.get_name() for p in manager().load_from_config(APTConfig(plugins=["b"]))] == ["b"]


def test_order_requires_then_priority_then_name_independent_of_discovery_order() -> None:
    classes = {
        "checkpoint": make("checkpoint", priority=-100),
        "align": make("align", requires=("moe",)),
        "moe": make("moe"),
        "logger": make("logger", priority=50),
        "zeta": make("zeta"),
        "early": make("early", priority=10, requires=("zeta",)),
    }
    orders = set()
    for seed in range(5):
        names = list(classes)
        random.Random(seed).shuffle(names)
        with fake_entry_points(*(FakeEntryPoint(n, classes[n]) for n in names)):
            pm = manager()
            orders.add(tuple(pm.list_loaded() if pm.load_from_config(APTConfig()) else ()))
    # zeta is required by early (priority 10), so it is lifted before it
    assert orders == {("logger", "zeta", "early", "moe", "align", "checkpoint")}


def test_requirements_run_first_on_every_event(pm: PluginManager) -> None:
    calls: list[str] = []
    hooks = {"on_step_end": lambda self, step: calls.append(self.get_name())}
    pm.register_plugin("dep", make("dep", priority=-5, **hooks))
    pm.register_plugin("user", make("user", priority=5, requires=("dep>=1.0",), **hooks))
    pm.load_from_config(APTConfig(plugins=["user", "dep"]))
    pm.setup_all()
    pm.trigger_event("on_step_end", step=0)
    assert calls == ["dep", "user"]


def test_plugin_config_model_instance_or_dict(pm: PluginManager) -> None:
    from pydantic import BaseModel

    class Cfg(BaseModel):
        width: int = 3

    pm.register_plugin("typed", make("typed", config_model=Cfg))
    pm.register_plugin("plain", make("plain"))
    pm.load_from_config(APTConfig(typed={"width": 7}, plain={"patience": 2}))
    assert isinstance(pm.get_plugin("typed").config, Cfg) and pm.get_plugin("typed").config.width == 7
    assert pm.get_plugin("plain").config == {"patience": 2}


def test_schedule_enables_at_boundary_and_state_round_trips(pm: PluginManager) -> None:
    events: list[str] = []

    def on_enable(self: Plugin, trainer: Any = None, epoch: Any = None, step: Any = None) -> None:
        events.append(f"enable@{epoch}")

    pm.register_plugin(
        "late", make("late", on_enable=on_enable, on_step_end=lambda self, step: events.append(f"step {step}"))
    )
    pm.load_from_config(APTConfig(schedules={"enable_late_at_epoch": 1}, training={"steps_per_epoch": 2}))
    pm.setup_all()
    assert not pm.get_plugin("late").is_enabled()
    for step in range(4):
        changed = pm.apply_schedule(epoch=step // 2, step=step)
        assert changed == (step == 2)
        pm.trigger_event("on_step_end", step=step)
    assert events == ["enable@1", "step 2", "step 3"]
    state = pm.state_dict()
    assert state["enabled"] == {"late": True}

    other = manager()
    other.register_plugin("late", make("late", on_enable=on_enable))
    with fake_entry_points():
        other.load_from_config(APTConfig(schedules={"enable_late_at_epoch": 1}))
    other.setup_all()
    assert other.load_state_dict(state) is True  # re-enabled on resume, with on_enable
    assert other.get_plugin("late").is_enabled() and events[-1] == "enable@None"


def test_plugin_disabled_by_an_error_stays_off_despite_its_schedule_and_across_resume(
    pm: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning says 'disabled for the rest of the run': the schedule must not re-enable it, nor a resume."""
    calls: list[Any] = []

    def on_enable(self: Plugin, trainer: Any = None, epoch: Any = None, step: Any = None) -> None:
        calls.append(f"enable@{epoch}")

    def on_step_end(self: Plugin, step: int) -> None:
        calls.append(step)
        raise ValueError("boom")

    config = APTConfig(schedules={"enable_flaky_at_epoch": 1}, training={"steps_per_epoch": 2})
    pm.register_plugin("flaky", make("flaky", critical=False, on_enable=on_enable, on_step_end=on_step_end))
    pm.load_from_config(config)
    pm.setup_all()
    with caplog.at_level(logging.WARNING):
        for step in range(8):
            pm.apply_schedule(epoch=step // 2, step=step)
            pm.trigger_event("on_step_end", step=step)
    assert calls == ["enable@1", 2]  # enabled once, failed once, then off for good
    plugin = pm.get_plugin("flaky")
    assert not plugin.is_enabled()
    assert plugin.failure == "plugin 'flaky' raised in hook 'on_step_end' at step 2: ValueError: boom"
    state = pm.state_dict()
    assert state["failed"] == {"flaky": plugin.failure}

    other = manager()
    other.register_plugin("flaky", make("flaky", critical=False, on_enable=on_enable, on_step_end=on_step_end))
    with fake_entry_points():
        other.load_from_config(config)
    other.setup_all()
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
        other.apply_schedule(epoch=3, step=6)
        other.trigger_event("on_step_end", step=6)
    resumed = other.get_plugin("flaky")
    assert not resumed.is_enabled() and resumed.failure == plugin.failure
    assert calls == ["enable@1", 2]
    assert "plugin 'flaky' stays disabled: before the checkpoint, plugin 'flaky' raised" in caplog.text
    resumed.enable()  # only an explicit enable re-arms it
    assert resumed.is_enabled() and resumed.failure is None


def test_fingerprint_differences_warn_or_raise(pm: PluginManager, caplog: pytest.LogCaptureFixture) -> None:
    pm.register_plugin("a", make("a", on_step_end=lambda self, step: None))
    pm.load_from_config(APTConfig(plugins=["a"]))
    pm.setup_all()
    saved = pm.fingerprint()
    assert saved["plugins"] == [{"name": "a", "version": "1.0.0", "distribution": None}]
    assert saved["order"] == {"on_step_end": ["a"]}
    assert pm.check_fingerprint(saved) == []
    saved["plugins"][0]["version"] = "0.9.0"
    saved["plugins"].append({"name": "gone", "version": "2.0", "distribution": None})
    with caplog.at_level(logging.WARNING):
        diffs = pm.check_fingerprint(saved)
    assert diffs == [
        "plugin 'gone' 2.0 was active when the checkpoint was written but is not loaded now",
        "plugin 'a' was version 0.9.0, now 1.0.0",
    ]
    assert "plugin set differs" in caplog.text
    with pytest.raises(PluginDependencyError, match="strict resume"):
        pm.check_fingerprint(saved, strict=True)


def test_unload_and_reload(pm: PluginManager) -> None:
    torn: list[str] = []
    pm.register_plugin("x", make("x", teardown=lambda self: torn.append("x"), on_step_end=lambda self, step: None))
    pm.load("x")
    pm.setup_all()
    pm.unload("x")
    assert torn == ["x"] and pm.list_loaded() == [] and not pm.hook_manager.has_handlers("on_step_end")
    pm.load("x")
    pm.setup_all()
    assert pm.hook_manager.has_handlers("on_step_end")


def test_directory_discovery(pm: PluginManager, tmp_path: Any) -> None:
    (tmp_path / "local_plugin.py").write_text(
        "from apt.plugins import Plugin\n\nclass Local(Plugin):\n    name = 'local'\n    version = '0.1.0'\n"
    )
    assert pm.discover(tmp_path) == ["local"]
    assert pm.load("local").get_version() == "0.1.0"


def test_directory_discovery_of_a_plugin_in_the_get_name_style(pm: PluginManager, tmp_path: Any) -> None:
    (tmp_path / "old_style.py").write_text(
        "from apt.plugins import Plugin\n\nclass OldStyle(Plugin):\n"
        "    def get_name(self):\n        return 'old_style'\n"
        "    def get_version(self):\n        return '2.0.0'\n"
    )
    assert pm.discover(tmp_path) == ["old_style"]
    assert pm.load("old_style").get_version() == "2.0.0"


def test_a_hook_mark_on_a_method_named_like_its_event_keeps_its_priority_and_condition(pm: PluginManager) -> None:
    from apt.plugins import every_n_steps
    from apt.plugins import hook

    ran: list[tuple[str, int]] = []

    class Zeta(Plugin):
        name = "zeta"

        @hook("on_step_end", priority=100, condition=every_n_steps(2))
        def on_step_end(self, step: int) -> None:
            ran.append(("zeta", step))

    class Alpha(Plugin):
        name = "alpha"

        def on_step_end(self, step: int) -> None:
            ran.append(("alpha", step))

    for cls in (Zeta, Alpha):
        pm.register_plugin(cls.name, cls)
    pm.load_from_config(APTConfig(plugins=["zeta", "alpha"]))
    pm.setup_all()
    for step in range(4):
        pm.trigger_event("on_step_end", step=step)
    assert ran == [("alpha", 0), ("zeta", 1), ("alpha", 1), ("alpha", 2), ("zeta", 3), ("alpha", 3)]
    assert [h.plugin for h in pm.hook_manager.ordered("on_step_end")] == ["zeta", "alpha"]


def test_a_loss_or_model_handler_marked_with_hook_makes_the_plugin_critical() -> None:
    from apt.plugins import hook

    class Marked(Plugin):
        name = "marked"

        @hook("on_compute_loss")
        def aux_loss(self, outputs: Any) -> None:
            return None

    class Builder(Plugin):
        name = "builder"

        @hook("on_model_built", priority=-5)
        def capture(self, model: Any) -> None:
            return None

    class Logger(Plugin):
        name = "logger"

        @hook("on_step_end")
        def log(self, step: int) -> None:
            return None

    assert Marked().is_critical() and Builder().is_critical()
    assert not Logger().is_critical()
    assert not type("Off", (Marked,), {"critical": False})().is_critical()


def test_a_config_section_for_a_plugin_two_distributions_provide_reports_the_real_cause() -> None:
    from apt.errors import PluginNotFoundError

    cls = make("dup")
    eps = [FakeEntryPoint("dup", cls, distribution="d1", version="1"), FakeEntryPoint("dup", cls, distribution="d2")]
    with fake_entry_points(*eps):
        with pytest.raises(PluginNotFoundError, match="provided by several distributions"):
            manager().load_from_config(APTConfig(plugins=["dup"], dup={"x": 1}))


def test_unloading_a_plugin_puts_back_the_core_provider_and_default_it_replaced(pm: PluginManager) -> None:
    class MyGelu:
        pass

    class MyMoE:
        pass

    class Shadow(Plugin):
        name = "shadow"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "gelu", MyGelu)  # same name as core's default
            registry.register("ffn", "moe", MyMoE, default=True)
            registry.register("norm", "rmsnorm", MyGelu, default=True)

    pm.register_plugin("shadow", Shadow)
    pm.load_from_config(APTConfig(plugins=["shadow"]))
    pm.setup_all()
    reg = pm.registry
    assert reg.get("ffn", "gelu") is MyGelu and reg.default_name("ffn") == "moe"
    assert reg.default_name("norm") == "rmsnorm"
    pm.unload("shadow")
    assert reg.default_name("ffn") == "gelu" and reg.get_info("ffn", "gelu")["is_default"]
    assert reg.get("ffn").__name__ == "MLP" and reg.get_info("ffn", "gelu")["plugin"] is None
    assert reg.list_providers("ffn") == ["gelu", "gelu_tanh", "swiglu"]
    assert reg.default_name("norm") == "layernorm" and reg.get("norm", "rmsnorm").__name__ == "RMSNorm"


def test_functions_a_plugin_registers_in_setup_belong_to_it(pm: PluginManager) -> None:
    ran: list[str] = []

    class Extra(Plugin):
        name = "extra"
        critical = False

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            hook_manager.register("on_step_end", lambda step: ran.append(f"extra {step}"))

    pm.register_plugin("extra", Extra)
    pm.load_from_config(APTConfig(plugins=["extra"]))
    pm.setup_all()
    assert pm.describe("extra")["hooks"] == ["on_step_end"]
    plugin = pm.get_plugin("extra")
    plugin.disable()
    pm.trigger_event("on_step_end", step=0)
    plugin.enable()
    pm.trigger_event("on_step_end", step=1)
    pm.unload("extra")
    pm.trigger_event("on_step_end", step=2)
    assert ran == ["extra 1"]


def test_a_setup_that_fails_leaves_no_provider_behind(pm: PluginManager) -> None:
    from apt.errors import PluginConflictError

    class A(Plugin):
        name = "a"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("norm", "shared", lambda **kw: "a")

    class B(Plugin):
        name = "b"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "b_ffn", lambda **kw: "b", default=True)
            registry.register("norm", "shared", lambda **kw: "b")  # a's name: a conflict

    pm.register_plugin("a", A)
    pm.register_plugin("b", B)
    pm.load_from_config(APTConfig(plugins=["a", "b"]))
    with pytest.raises(PluginConflictError):
        pm.setup_all()
    assert pm.registry.default_name("ffn") == "gelu" and not pm.registry.has("ffn", "b_ffn")


def test_unload_names_teardown_errors_and_refuses_to_strand_a_dependent(pm: PluginManager) -> None:
    from apt.errors import PluginDependencyError

    def teardown(self: Plugin) -> None:
        raise OSError("cannot close file")

    pm.register_plugin("zdep", make("zdep", version="2.0.0", teardown=teardown))
    pm.register_plugin("app", make("app", requires=("zdep>=2",)))
    pm.load_from_config(APTConfig(plugins=["app", "zdep"]))
    pm.setup_all()
    with pytest.raises(PluginDependencyError, match="cannot unload plugin 'zdep': 'app' require"):
        pm.unload("zdep")
    pm.unload("app")
    with pytest.raises(PluginTeardownError, match="plugin 'zdep': OSError: cannot close file"):
        pm.unload("zdep")
    assert pm.list_loaded() == []


def test_plugins_loaded_one_by_one_are_resolved_before_setup() -> None:
    from apt.errors import PluginDependencyError

    order: list[str] = []

    def setup(self: Plugin, registry: Any, hook_manager: Any) -> None:
        order.append(self.get_name())

    with fake_entry_points():
        pm = manager()
        pm.register_plugin("zdep", make("zdep", version="2.0.0", setup=setup))
        pm.register_plugin("app", make("app", requires=("zdep>=2",), setup=setup))
        pm.load("app")
        pm.load("zdep")
        pm.setup_all()
        assert order == ["zdep", "app"] and pm.list_loaded() == ["zdep", "app"]

        alone = manager()
        alone.register_plugin("zdep", make("zdep", version="2.0.0"))
        alone.register_plugin("app", make("app", requires=("zdep>=2",)))
        alone.load("app")
        with pytest.raises(PluginDependencyError, match="plugin 'app' requires 'zdep'"):
            alone.setup_all()


def test_unloading_two_plugins_that_moved_defaults_puts_back_the_core_default(pm: PluginManager) -> None:
    """fast replaces core swiglu and makes it the default; moe then takes the default; both go."""

    class Fast(Plugin):
        name = "fast"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "swiglu", lambda **kw: "fast", default=True)

    class Moe(Plugin):
        name = "moe"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "moe", lambda **kw: "moe", default=True)

    pm.register_plugin("fast", Fast)
    pm.register_plugin("moe", Moe)
    pm.load_from_config(APTConfig(plugins=["fast", "moe"]))
    pm.setup_all()
    pm.unload("fast")
    pm.unload("moe")
    assert pm.registry.default_name("ffn") == "gelu"
    assert not pm.registry.get_info("ffn", "swiglu")["is_default"]


def test_a_default_displaced_while_its_name_was_shadowed_comes_back(pm: PluginManager) -> None:
    """p makes moe the default; q then replaces gelu; p goes first, then q: core gelu is the default again."""

    class P(Plugin):
        name = "p"

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "moe", lambda **kw: "moe", default=True)

    class Q(Plugin):
        name = "q"
        requires = ("p",)  # sets up after p

        def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
            registry.register("ffn", "gelu", lambda **kw: "q")

    pm.register_plugin("p", P)
    pm.register_plugin("q", Q)
    pm.load_from_config(APTConfig(plugins=["p", "q"]))
    pm.setup_all()
    assert pm.registry.default_name("ffn") == "moe"
    Q.requires = ()  # let p go first
    pm.unload("p")
    assert pm.registry.default_name("ffn") == "gelu" and pm.registry.get("ffn")() == "q"
    pm.unload("q")
    assert pm.registry.default_name("ffn") == "gelu" and pm.registry.get("ffn").__name__ == "MLP"
    assert pm.registry.get_info("ffn", "gelu")["is_default"]
