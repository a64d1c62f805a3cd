"""The bad-input table: every user mistake gets a typed error naming the culprit and the fix."""

from __future__ import annotations

import logging

import pytest
from apt.core import APTConfig
from apt.core import ProviderRegistry
from apt.errors import ConfigError
from apt.errors import PluginConflictError
from apt.errors import PluginDependencyError
from apt.errors import PluginHookError
from apt.errors import PluginLoadError
from apt.errors import PluginNotFoundError
from apt.errors import PluginValidationError
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.plugins import PluginTeardownError
from apt.testing._entry_points import FakeEntryPoint
from apt.testing._entry_points import fake_entry_points
from plugin_helpers import make
from plugin_helpers import manager
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field


def test_unknown_plugin_name_lists_installed(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe"))
    pm.register_plugin("align", make("align"))
    with pytest.raises(
        PluginNotFoundError, match=r"unknown plugin 'mow' \(did you mean 'moe'\?\).*installed plugins: align, moe"
    ):
        pm.load_from_config(APTConfig(plugins=["mow"]))


def test_unknown_name_is_rejected_before_any_import() -> None:
    broken = FakeEntryPoint("broken", ImportError("boom"))
    with fake_entry_points(broken):
        pm = manager()
        with pytest.raises(PluginNotFoundError):
            pm.load_from_config(APTConfig(plugins=["broken", "nope"]))
    assert broken.loads == 0


def test_missing_requirement(pm: PluginManager) -> None:
    pm.register_plugin("align", make("align", requires=("moe>=1.0",)))
    with pytest.raises(
        PluginDependencyError, match=r"plugin 'align' requires 'moe>=1.0', which is not installed; install it"
    ):
        pm.load_from_config(APTConfig(plugins=["align"]))


def test_version_conflict(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe", version="1.0.0"))
    pm.register_plugin("align", make("align", requires=("moe>=2.0",)))
    with pytest.raises(PluginDependencyError, match=r"plugin 'align' requires 'moe>=2.0' but moe 1.0.0 is loaded"):
        pm.load_from_config(APTConfig(plugins=["moe", "align"]))


def test_requirement_cycle_prints_the_cycle(pm: PluginManager) -> None:
    pm.register_plugin("a", make("a", requires=("b",)))
    pm.register_plugin("b", make("b", requires=("c",)))
    pm.register_plugin("c", make("c", requires=("a",)))
    with pytest.raises(PluginDependencyError, match=r"requirement cycle: a -> b -> c -> a"):
        pm.load_from_config(APTConfig(plugins=["a", "b", "c"]))


def test_conflicting_plugins_name_both(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe", conflicts=("dense_only",)))
    pm.register_plugin("dense_only", make("dense_only"))
    with pytest.raises(PluginConflictError, match=r"plugins 'moe' and 'dense_only' conflict") as info:
        pm.load_from_config(APTConfig(plugins=["moe", "dense_only"]))
    assert (info.value.plugin, info.value.other) == ("moe", "dense_only")


def test_two_plugins_registering_the_same_provider(pm: PluginManager) -> None:
    def reg(self: Plugin, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        registry.register("router", "topk", dict)

    pm.register_plugin("moe", make("moe", setup=reg))
    pm.register_plugin("moe2", make("moe2", setup=reg))
    pm.load_from_config(APTConfig(plugins=["moe", "moe2"]))
    with pytest.raises(
        PluginConflictError, match=r"provider router:topk is registered by plugin 'moe' and again by 'moe2'"
    ):
        pm.setup_all()


class MoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_experts: int = Field(8, gt=0)
    top_k: int = 2


def test_invalid_plugin_config_value_names_the_path(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe", config_model=MoEConfig))
    with pytest.raises(
        ConfigError, match=r"config key 'moe.num_experts': Input should be greater than 0 \(got -1\)"
    ) as info:
        pm.load_from_config(APTConfig(moe={"num_experts": -1}))
    assert info.value.key == "moe.num_experts"


def test_unknown_plugin_config_key_suggests(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe", config_model=MoEConfig))
    with pytest.raises(ConfigError, match=r"unknown config key 'moe.top_kk' \(did you mean 'top_k'\?\)"):
        pm.load_from_config(APTConfig(moe={"top_kk": 1}))


def test_unknown_config_key_core_and_top_level(pm: PluginManager) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'training.max_epoch' \(did you mean 'max_epochs'\?\)"):
        APTConfig(training={"max_epoch": 3})
    pm.register_plugin("moe", make("moe"))
    with pytest.raises(ConfigError, match=r"unknown config key 'mooe' \(did you mean 'moe'\?\)"):
        pm.load_from_config(APTConfig(mooe={"top_k": 1}))


def test_misspelled_hook_name(pm: PluginManager) -> None:
    def on_epoc_end(self: Plugin, epoch: int) -> None:
        pass

    pm.register_plugin("typo", make("typo", on_epoc_end=on_epoc_end))
    with pytest.raises(
        PluginValidationError, match=r"on_epoc_end looks like a hook but matches none \(did you mean 'on_epoch_end'\?\)"
    ):
        pm.load("typo")


def test_entry_point_whose_import_fails_is_reported_and_others_load() -> None:
    good = make("good")
    with fake_entry_points(
        FakeEntryPoint(
            "broken",
            ModuleNotFoundError("No module named 'torch_scatter'"),
            distribution="apt-plugin-broken",
            version="0.3.1",
        ),
        FakeEntryPoint("good", good),
    ):
        pm = manager()
        loaded = pm.load_from_config(APTConfig())  # autoload: failures are reported, not fatal
        assert [p.get_name() for p in loaded] == ["good"]
        failure = pm.failures["broken"]
        assert (failure.distribution, failure.version, failure.stage) == ("apt-plugin-broken", "0.3.1", "import")
        assert "plugin 'broken' (apt-plugin-broken 0.3.1): importing" in failure.message
        assert "No module named 'torch_scatter'" in failure.message
        # named explicitly, the same failure is an error
        pm2 = manager()
        with pytest.raises(PluginLoadError, match=r"plugin 'broken' \(apt-plugin-broken 0.3.1\)"):
            pm2.load_from_config(APTConfig(plugins=["broken", "good"]))


def test_dependents_of_a_failed_plugin_are_reported_with_the_chain() -> None:
    with fake_entry_points(
        FakeEntryPoint("base", ImportError("boom")),
        FakeEntryPoint("mid", make("mid", requires=("base",))),
        FakeEntryPoint("top", make("top", requires=("mid",))),
        FakeEntryPoint("other", make("other")),
    ):
        pm = manager()
        loaded = pm.load_from_config(APTConfig())
    assert [p.get_name() for p in loaded] == ["other"]
    assert pm.failures["top"].chain == ["top", "mid", "base"]
    assert "top -> mid -> base" in pm.failures["top"].message


def _raiser(self: Plugin, step: int) -> None:
    raise ValueError("bad value")


def test_hook_raising_in_critical_plugin_stops_after_on_exception(pm: PluginManager) -> None:
    seen: list[str] = []

    def on_exception(self: Plugin, exception: BaseException) -> None:
        seen.append(f"{self.get_name()} saw {type(exception).__name__}")

    pm.register_plugin("crit", make("crit", critical=True, on_step_end=_raiser))
    pm.register_plugin(
        "saver", make("saver", on_exception=on_exception, on_step_end=lambda self, step: seen.append("saver ran"))
    )
    pm.load_from_config(APTConfig(plugins=["crit", "saver"]))
    pm.setup_all()
    with pytest.raises(
        PluginHookError, match=r"plugin 'crit' raised in hook 'on_step_end' at step 7: ValueError: bad value"
    ) as info:
        try:
            pm.trigger_event("on_step_end", step=7)
        except PluginHookError as exc:
            pm.trigger_event("on_exception", exception=exc, step=7)  # what the trainer does
            raise
    assert (info.value.plugin, info.value.hook, info.value.step) == ("crit", "on_step_end", 7)
    assert isinstance(info.value.__cause__, ValueError)
    assert seen == ["saver ran", "saver saw PluginHookError"]  # other handlers ran; the saver could save


def test_hook_raising_in_non_critical_plugin_disables_it(pm: PluginManager, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []
    pm.register_plugin("flaky", make("flaky", critical=False, on_step_end=_raiser))
    pm.register_plugin("steady", make("steady", on_step_end=lambda self, step: ran.append(step)))
    pm.load_from_config(APTConfig(plugins=["flaky", "steady"]))
    pm.setup_all()
    with caplog.at_level(logging.WARNING):
        pm.trigger_event("on_step_end", step=1)
        pm.trigger_event("on_step_end", step=2)
    assert ran == [1, 2]
    assert not pm.get_plugin("flaky").is_enabled()
    assert "plugin 'flaky' raised in hook 'on_step_end' at step 1: ValueError: bad value" in caplog.text
    assert "disabled for the rest of the run" in caplog.text
    stats = pm.hook_manager.get_stats("on_step_end")["on_step_end"]["handlers"]
    flaky = next(h for h in stats if h["plugin"] == "flaky")
    assert (flaky["calls"], flaky["errors"]) == (1, 1)
    assert "ValueError: bad value" in flaky["last_error"]


def test_plugin_errors_raise_makes_every_plugin_critical(pm: PluginManager) -> None:
    pm.register_plugin("flaky", make("flaky", critical=False, on_step_end=_raiser))
    pm.load_from_config(APTConfig(plugins=["flaky"], training={"plugin_errors": "raise"}))
    pm.setup_all()
    with pytest.raises(PluginHookError, match="plugin 'flaky'"):
        pm.trigger_event("on_step_end", step=0)


def test_teardown_raising_still_tears_down_the_others(pm: PluginManager) -> None:
    order: list[str] = []

    def td(tag: str, fail: bool) -> object:
        def teardown(self: Plugin) -> None:
            order.append(tag)
            if fail:
                raise RuntimeError(f"{tag} could not close")

        return teardown

    pm.register_plugin("a", make("a", teardown=td("a", True)))
    pm.register_plugin("b", make("b", teardown=td("b", False)))
    pm.register_plugin("c", make("c", teardown=td("c", True)))
    pm.load_from_config(APTConfig(plugins=["a", "b", "c"]))
    pm.setup_all()
    with pytest.raises(PluginTeardownError) as info:
        pm.teardown_all()
    assert order == ["c", "b", "a"]  # reverse setup order, every one ran
    assert [n for n, _ in info.value.errors] == ["c", "a"]
    assert "plugin 'c': RuntimeError: c could not close" in str(info.value)


def test_api_version_mismatch_names_both(pm: PluginManager) -> None:
    pm.register_plugin("future", make("future", api_version=">=2,<3"))
    with pytest.raises(PluginValidationError, match=r"supports plugin API >=2,<3 but apt-core provides plugin API 1.0"):
        pm.load("future")


def test_disable_plugins_typo_is_an_error(pm: PluginManager) -> None:
    pm.register_plugin("moe", make("moe"))
    with pytest.raises(PluginNotFoundError, match=r"unknown plugin 'mo' \(did you mean 'moe'\?\)"):
        pm.load_from_config(APTConfig(disable_plugins=["mo"]))


def test_handler_asking_for_an_argument_the_hook_lacks() -> None:
    from apt.errors import HookError

    hm = HookManager()
    with pytest.raises(HookError, match=r"takes argument\(s\) 'los', which that hook does not provide"):
        hm.register("on_step_end", lambda step, los: None)
    with pytest.raises(HookError, match=r"unknown hook event 'on_stepend' \(did you mean 'on_step_end'\?\)"):
        hm.register("on_stepend", lambda step: None)


def test_handler_or_condition_with_a_positional_only_parameter_is_refused() -> None:
    """Hook arguments are passed by keyword: ``def f(step, /)`` could never be called."""
    from apt.errors import HookError

    def handler(step: int, /) -> None: ...

    hm = HookManager()
    with pytest.raises(
        HookError, match=r"handler 'test_.*handler' for hook 'on_step_end' takes 'step' positional-only"
    ):
        hm.register("on_step_end", handler)
    with pytest.raises(HookError, match=r"condition .* takes 'epoch' positional-only.*remove the '/'"):
        hm.register("on_epoch_end", lambda **kw: None, condition=lambda epoch, /: epoch > 1)
    assert hm.list_hooks("on_step_end") == [] and hm.list_hooks("on_epoch_end") == []


def test_plugin_named_twice_by_distributions_says_why_it_cannot_load() -> None:
    with fake_entry_points(
        FakeEntryPoint("dup", make("dup"), distribution="apt-plugin-dup"),
        FakeEntryPoint("dup", make("dup"), distribution="apt-plugin-dup-fork"),
    ):
        pm = manager()
        with pytest.raises(
            PluginNotFoundError, match=r"plugin 'dup' cannot load: .*several distributions .*uninstall all but one"
        ):
            pm.load_from_config(APTConfig(plugins=["dup"]))
