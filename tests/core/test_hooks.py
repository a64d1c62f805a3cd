"""HookManager behaviour: arguments, order, conditions, middleware, statistics, dedup."""

from __future__ import annotations

from typing import Any

import pytest
from apt.core import APTConfig
from apt.plugins import HookEvents
from apt.plugins import HookManager
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.plugins import after_epoch
from apt.plugins import before_epoch
from apt.plugins import every_n_epochs
from apt.plugins import every_n_steps
from apt.plugins import hook


def test_handlers_get_the_subset_of_arguments_they_ask_for() -> None:
    hm = HookManager()
    got: list[Any] = []
    hm.register("on_step_end", lambda loss, step: got.append(("pos", loss, step)))
    hm.register("on_step_end", lambda *, step: got.append(("kwonly", step)))
    hm.register("on_step_end", lambda **kw: got.append(("all", sorted(kw))))
    hm.register("on_step_end", lambda step, extra=3: got.append(("default", step, extra)))
    hm.trigger("on_step_end", step=4, loss=0.5)
    assert ("pos", 0.5, 4) in got and ("kwonly", 4) in got and ("default", 4, 3) in got
    everything = next(g for g in got if g[0] == "all")
    assert everything[1] == sorted(["trainer", "model", "batch", "epoch", "step", "loss", "metrics"])


def test_missing_arguments_arrive_as_none() -> None:
    hm = HookManager()
    seen = {}
    hm.register("on_epoch_end", lambda epoch, metrics: seen.update(epoch=epoch, metrics=metrics))
    hm.trigger("on_epoch_end", epoch=2)
    assert seen == {"epoch": 2, "metrics": None}


def test_results_are_collected_in_run_order() -> None:
    hm = HookManager()
    hm.register("on_step_end", lambda step: "low", priority=-5)
    hm.register("on_step_end", lambda step: "high", priority=5)
    hm.register("on_step_end", lambda step: None)
    hm.register("on_step_end", lambda step: "mid-1")
    hm.register("on_step_end", lambda step: "mid-2")
    assert hm.trigger("on_step_end", step=0) == ["high", "mid-1", "mid-2", "low"]


def _appender(calls: list[str], name: str) -> Any:
    return lambda step: calls.append(name)


def test_order_ties_break_by_plugin_name_not_registration_order() -> None:
    for registration in (["zeta", "alpha", "mid"], ["mid", "zeta", "alpha"]):
        hm = HookManager()
        calls: list[str] = []
        for name in registration:
            plugin = type(name, (Plugin,), {"name": name})()
            hm.register("on_step_end", _appender(calls, name), owner=plugin)
        hm.trigger("on_step_end", step=0)
        assert calls == ["alpha", "mid", "zeta"]


def test_aliases_reach_the_canonical_event() -> None:
    hm = HookManager()
    calls: list[str] = []
    hm.register("on_epoch_start", lambda epoch: calls.append("alias"))
    hm.register(HookEvents.ON_EPOCH_BEGIN, lambda epoch: calls.append("canonical"))
    hm.trigger("on_epoch_begin", epoch=0)
    hm.trigger("on_epoch_start", epoch=1)
    assert calls == ["alias", "canonical"] * 2
    assert len(HookEvents.all()) >= 16


def test_conditions_combine() -> None:
    hm = HookManager()
    fired: list[tuple[str, int]] = []
    hm.register("on_epoch_end", lambda epoch: fired.append(("every2", epoch)), condition=every_n_epochs(2))
    hm.register(
        "on_epoch_end", lambda epoch: fired.append(("window", epoch)), condition=after_epoch(1) & before_epoch(4)
    )
    hm.register(
        "on_epoch_end",
        lambda epoch: fired.append(("not0", epoch)),
        condition=~before_epoch(1) | (lambda epoch: epoch == 0),
    )
    hm.register("on_epoch_end", lambda epoch: fired.append(("plain", epoch)), condition=lambda epoch: epoch == 5)
    for epoch in range(6):
        hm.trigger("on_epoch_end", epoch=epoch)
    assert [e for n, e in fired if n == "every2"] == [1, 3, 5]
    assert [e for n, e in fired if n == "window"] == [2, 3]
    assert [e for n, e in fired if n == "not0"] == [0, 1, 2, 3, 4, 5]
    assert [e for n, e in fired if n == "plain"] == [5]


def test_every_n_steps_counts_completed_steps() -> None:
    hm = HookManager()
    steps: list[int] = []
    hm.register("on_step_end", lambda step: steps.append(step), condition=every_n_steps(3))
    for step in range(10):
        hm.trigger("on_step_end", step=step)
    assert steps == [2, 5, 8]


def test_middleware_rewrites_kwargs() -> None:
    hm = HookManager()
    seen: list[float] = []
    hm.register("on_step_end", lambda loss: seen.append(loss))
    hm.add_middleware(lambda event, kw: {**kw, "loss": kw["loss"] * 2} if event == "on_step_end" else None)
    hm.trigger("on_step_end", step=0, loss=1.5)
    assert seen == [3.0]


def test_statistics_per_handler() -> None:
    hm = HookManager()

    def slow(step: int) -> None:
        sum(range(2000))

    handler = hm.register("on_step_end", slow, condition=every_n_steps(2))
    for step in range(6):
        hm.trigger("on_step_end", step=step)
    (h,) = hm.get_stats()["on_step_end"]["handlers"]
    assert (h["calls"], h["skipped"], h["errors"]) == (3, 3, 0)
    assert h["total_s"] > 0 and h["max_s"] >= h["mean_s"] > 0
    # HandlerStats is public: its fields are the report's numbers
    stats = handler.stats
    assert (stats.calls, stats.total, stats.max, stats.last_error) == (3, h["total_s"], h["max_s"], None)


def test_registering_the_same_function_twice_runs_it_once() -> None:
    hm = HookManager()
    calls: list[int] = []

    def handler(step: int) -> None:
        calls.append(step)

    first = hm.register("on_step_end", handler)
    assert hm.register("on_step_end", handler, priority=4) is first
    hm.trigger("on_step_end", step=1)
    assert calls == [1]
    assert hm.unregister("on_step_end", handler) == 1
    hm.trigger("on_step_end", step=2)
    assert calls == [1]


def test_events_without_handlers_return_empty_and_unknown_events_fail() -> None:
    from apt.errors import HookError

    hm = HookManager()
    assert hm.trigger("on_train_end") == []
    assert not hm.has_handlers("on_train_end")
    with pytest.raises(HookError, match="did you mean 'on_train_end'"):
        hm.trigger("on_train_ends")


def test_disabled_plugin_handlers_leave_the_dispatch(pm: PluginManager) -> None:
    calls: list[int] = []

    class P(Plugin):
        name = "p"

        def on_step_end(self, step: int) -> None:
            calls.append(step)

    pm.register_plugin("p", P)
    pm.load("p")
    pm.setup_all()
    plugin = pm.get_plugin("p")
    plugin.disable()
    assert not pm.hook_manager.has_handlers("on_step_end")
    pm.trigger_event("on_step_end", step=0)
    plugin.enable()
    pm.trigger_event("on_step_end", step=1)
    assert calls == [1]


def test_hook_decorator_on_methods_and_functions(fresh_globals: PluginManager) -> None:
    import apt.plugins

    calls: list[str] = []

    class P(Plugin):
        name = "decorated"

        @hook("on_epoch_end", priority=3)
        def remember(self, epoch: int) -> None:
            calls.append(f"method {epoch}")

    @hook("on_epoch_end", priority=1)
    def module_level(epoch: int) -> None:
        calls.append(f"function {epoch}")

    fresh_globals.register_plugin("decorated", P)
    fresh_globals.load_from_config(APTConfig(plugins=["decorated"]))
    fresh_globals.setup_all()
    apt.plugins.hook_manager.trigger("on_epoch_end", epoch=1)
    assert calls == ["method 1", "function 1"]


def test_trigger_by_plugin_and_per_plugin_state(pm: PluginManager) -> None:
    received: dict[str, Any] = {}

    def make(name: str) -> type[Plugin]:
        def save(self: Plugin, checkpoint: dict[str, Any]) -> Any:
            return {"me": self.get_name()}

        def load(self: Plugin, state: Any) -> None:
            received[self.get_name()] = state

        return type(name, (Plugin,), {"name": name, "on_save_checkpoint": save, "on_load_checkpoint": load})

    for name in ("a", "b"):
        pm.register_plugin(name, make(name))
    pm.load_from_config(APTConfig(plugins=["a", "b"]))
    pm.setup_all()
    states = pm.collect_states(trainer=None, checkpoint={})
    assert states == {
        "a": {"version": "0.0.0", "state_version": 1, "state": {"me": "a"}},
        "b": {"version": "0.0.0", "state_version": 1, "state": {"me": "b"}},
    }
    pm.restore_states(trainer=None, checkpoint={}, states=states)
    assert received == {"a": {"me": "a"}, "b": {"me": "b"}}


def test_a_load_handler_may_take_no_arguments_or_all(pm: PluginManager) -> None:
    """on_load_checkpoint's per-plugin state reaches **kwargs handlers narrowed, and no-argument handlers run."""
    seen: list[Any] = []

    class Bare(Plugin):
        name = "bare"

        def on_load_checkpoint(self) -> None:
            seen.append("bare")

    class Kw(Plugin):
        name = "kw"

        def on_load_checkpoint(self, **kwargs: Any) -> None:
            seen.append(kwargs["state"])

    pm.register_plugin("bare", Bare)
    pm.register_plugin("kw", Kw)
    pm.load_from_config(APTConfig(plugins=["bare", "kw"]))
    pm.setup_all()
    pm.restore_states(trainer=None, checkpoint={}, states={"kw": {"state": 7}, "bare": {"state": 1}})
    assert seen == ["bare", 7]
    assert all(h.stats.errors == 0 for h in pm.hook_manager.handlers("on_load_checkpoint"))


def test_on_resume_is_first_result() -> None:
    hm = HookManager()
    hm.register("on_resume", lambda resume: None)
    hm.register("on_resume", lambda resume: {"from": resume})
    assert hm.trigger("on_resume", trainer=None, resume="latest") == [{"from": "latest"}]


# --- removal, nesting, conditions, arguments, standalone use ------------------------------


def test_removed_handlers_never_run_again(pm: PluginManager) -> None:
    """unregister, unregister_owner, clear and unload take handlers out of the dispatch for good."""
    ran: list[str] = []
    hm = HookManager()
    a = hm.register("on_step_end", lambda step: ran.append("a"))
    hm.register("on_step_end", lambda step: ran.append("b"))
    assert hm.unregister("on_step_end", a) == 1
    hm.trigger("on_step_end", step=0)
    assert ran == ["b"]
    hm.clear()
    hm.register("on_step_end", lambda step: ran.append("c"))
    hm.trigger("on_step_end", step=1)
    assert ran == ["b", "c"]

    logger = type("Logger", (Plugin,), {"name": "logger", "on_step_end": lambda self, step: ran.append("logger")})
    other = type("Other", (Plugin,), {"name": "other", "on_step_end": lambda self, step: ran.append("other")})
    pm.register_plugin("logger", logger)
    pm.register_plugin("other", other)
    pm.load_from_config(APTConfig(plugins=["logger", "other"]))
    pm.setup_all()
    pm.unload("logger")
    ran.clear()
    pm.trigger_event("on_step_end", step=2)
    assert ran == ["other"]


def test_an_error_is_settled_by_its_own_dispatch_not_by_a_nested_one() -> None:
    """A critical error is raised by the trigger it happened in, even when a later handler of that
    event triggers another event; the later handler is not blamed."""
    from apt.errors import PluginHookError

    hm = HookManager()
    loss = type("Loss", (Plugin,), {"name": "loss", "critical": True})()
    reporter = type("Reporter", (Plugin,), {"name": "reporter", "critical": False})()

    def broken(step: int) -> None:
        raise ValueError("loss plugin broke")

    hm.register("on_step_end", broken, priority=10, owner=loss)
    hm.register("on_step_end", lambda step: hm.trigger("on_validation_begin", step=step), owner=reporter)
    hm.register("on_validation_begin", lambda step: None)
    with pytest.raises(PluginHookError, match="plugin 'loss' raised in hook 'on_step_end' at step 3") as info:
        hm.trigger("on_step_end", step=3)
    assert info.value.plugin == "loss"
    assert reporter.is_enabled() and reporter.failure is None


def test_a_failing_condition_is_isolated_like_its_handler() -> None:
    hm = HookManager()
    ran: list[str] = []
    flaky = type("Flaky", (Plugin,), {"name": "flaky", "critical": False})()
    hm.register("on_step_end", lambda step: ran.append("first"), priority=5)
    hm.register("on_step_end", lambda step: ran.append("flaky"), owner=flaky, condition=lambda metrics: metrics["acc"])
    hm.register("on_step_end", lambda step: ran.append("last"), priority=-5)
    hm.trigger("on_step_end", step=1, metrics={"loss": 1.0})
    assert ran == ["first", "last"]
    assert not flaky.is_enabled()
    assert flaky.failure == "plugin 'flaky' raised in hook 'on_step_end' at step 1: KeyError: 'acc'"


def test_a_condition_on_an_argument_the_hook_lacks_is_refused_at_registration() -> None:
    from apt.errors import HookError

    hm = HookManager()
    with pytest.raises(HookError, match=r"condition .* for hook 'on_step_begin' takes argument\(s\) 'loss'"):
        hm.register("on_step_begin", lambda step: None, condition=lambda loss: loss > 1)
    with pytest.raises(HookError, match="takes argument"):
        hm.register("on_step_begin", lambda step: None, condition=every_n_steps(2) & (lambda loss: loss > 1))
    hm.register("on_step_begin", lambda step: None, condition=lambda loss=None: True)  # optional: fine


def test_a_misspelt_argument_is_an_error_and_left_out_ones_are_none() -> None:
    from apt.errors import HookError

    hm = HookManager()
    seen: dict[str, Any] = {}
    hm.register("on_epoch_end", lambda epoch, metrics: seen.update(epoch=epoch, metrics=metrics))
    every = dict(trainer=None, model=None, epoch=1, step=2)
    with pytest.raises(HookError, match=r"hook 'on_epoch_end' has no argument 'metric' \(did you mean 'metrics'\?\)"):
        hm.trigger("on_epoch_end", **every, metric={"loss": 1.0})  # as many arguments as the hook has
    with pytest.raises(HookError, match="no argument 'epok'"):
        hm.trigger("on_epoch_end", epok=3)
    assert seen == {}
    hm.trigger("on_epoch_end", **every)
    assert seen == {"epoch": 1, "metrics": None}


def test_a_standalone_hook_manager_honours_disable_and_isolation() -> None:
    hm = HookManager()
    ran: list[int] = []
    quiet = type("Quiet", (Plugin,), {"name": "quiet"})()
    hm.register("on_step_end", lambda step: ran.append(step), owner=quiet)
    quiet.disable()
    hm.trigger("on_step_end", step=0)
    quiet.enable()
    hm.trigger("on_step_end", step=1)
    assert ran == [1]

    flaky = type("Flaky", (Plugin,), {"name": "flaky", "critical": False})()
    calls: list[int] = []

    def fails(step: int) -> None:
        calls.append(step)
        raise ValueError("boom")

    hm.register("on_step_end", fails, owner=flaky)
    for step in range(2, 5):
        hm.trigger("on_step_end", step=step)
    assert calls == [2] and not flaky.is_enabled()


def test_a_critical_error_in_a_nested_dispatch_stops_the_outer_one() -> None:
    """A non-critical handler that triggers another event must not swallow a critical plugin's error there."""
    from apt.errors import PluginHookError

    hm = HookManager()
    moe = type("Moe", (Plugin,), {"name": "moe", "critical": True})()
    ckpt = type("Ckpt", (Plugin,), {"name": "ckpt", "critical": False})()

    def broken(checkpoint: Any) -> None:
        raise RuntimeError("state broke")

    hm.register("on_save_checkpoint", broken, owner=moe)
    hm.register("on_step_end", lambda step: hm.trigger("on_save_checkpoint", checkpoint={}), owner=ckpt)
    with pytest.raises(PluginHookError, match="plugin 'moe' raised in hook 'on_save_checkpoint'") as info:
        hm.trigger("on_step_end", step=1)
    assert info.value.plugin == "moe"
    assert ckpt.is_enabled() and ckpt.failure is None
    hm.unregister("on_save_checkpoint")
    hm.trigger("on_step_end", step=2)  # nothing stale is settled later
    assert ckpt.is_enabled()


def test_middleware_errors_name_the_middleware_and_the_hook() -> None:
    from apt.errors import HookError

    hm = HookManager()
    hm.register("on_step_end", lambda step: None)

    def scale_loss(event: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**kwargs, "loss": kwargs["loss"] * 2}

    hm.add_middleware(scale_loss)
    with pytest.raises(HookError, match="middleware '.*scale_loss' raised on hook 'on_step_end': KeyError: 'loss'"):
        hm.trigger("on_step_end", step=0)
    hm.remove_middleware(scale_loss)
    hm.add_middleware(lambda event, kwargs: True)
    with pytest.raises(HookError, match="returned bool on hook 'on_step_end'; return the rewritten"):
        hm.trigger("on_step_end", step=0)


def test_built_in_conditions_need_their_counter() -> None:
    from apt.errors import HookError

    hm = HookManager()
    for condition in (every_n_epochs(1), every_n_steps(1), after_epoch(0), before_epoch(3), lambda step, **kw: True):
        with pytest.raises(HookError, match="for hook 'on_save_checkpoint' takes argument"):
            hm.register("on_save_checkpoint", lambda checkpoint: None, condition=condition)
    hm.register("on_epoch_end", lambda epoch: None, condition=every_n_epochs(2) & every_n_steps(3))
