"""Run state of the loaded plugins (``{name: plugin}`` in resolved order): schedules, enabled
flags and plugin states in checkpoints, fingerprints. The PluginManager's methods call these.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from apt.core.schedules import Schedule
from apt.errors import PluginDependencyError
from apt.plugins.base import Plugin
from apt.plugins.hooks import HookManager
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.view import TrainerView


__all__ = [
    "apply_schedule",
    "check_fingerprint",
    "collect_states",
    "fingerprint",
    "load_plugins_state",
    "plugins_state",
    "restore_states",
]

log = logging.getLogger("apt.plugins")

Plugins = Mapping[str, Plugin]


def apply_schedule(
    plugins: Plugins, schedule: Schedule, trainer: TrainerView | None, epoch: int | None, step: int | None
) -> bool:
    """Enable / disable scheduled plugins at this boundary; True if anything changed."""
    changed = False
    for name, plugin in plugins.items():
        if not schedule.is_scheduled(name) or plugin.failure is not None:
            continue  # a plugin disabled by an error stays off, whatever its schedule says
        want = schedule.should_enable_plugin(name, epoch=epoch, step=step)
        if want != plugin.is_enabled():
            changed, verb = True, "enabling" if want else "disabling"
            log.info("schedule: %s plugin %r at epoch %s, step %s", verb, name, epoch, step)
            _toggle(plugin, want, trainer, epoch, step)
    return changed


def plugins_state(plugins: Plugins, schedule: Schedule, hook_manager: HookManager) -> dict[str, Any]:
    """Enabled flags, why any plugin was disabled by an error, the schedule and the hook statistics."""
    return {
        "enabled": {n: p.is_enabled() for n, p in plugins.items()},
        "failed": {n: p.failure for n, p in plugins.items() if p.failure is not None},
        "schedule": schedule.to_dict(),
        "stats": hook_manager.get_stats(),
    }


def load_plugins_state(plugins: Plugins, state: dict[str, Any], trainer: TrainerView | None) -> bool:
    """Restore what :func:`plugins_state` saved; True if any plugin was enabled or disabled."""
    changed = False
    failed = dict(state.get("failed") or {})
    for name, enabled in dict(state.get("enabled", {})).items():
        plugin = plugins.get(name)
        if plugin is None:
            continue
        if name in failed:
            changed = changed or plugin.is_enabled()
            plugin.disable_for_error(str(failed[name]))
            log.warning("plugin %r stays disabled: before the checkpoint, %s", name, failed[name])
        elif enabled != plugin.is_enabled():
            changed = True
            _toggle(plugin, enabled, trainer, None, None)
    return changed


def collect_states(
    plugins: Plugins, hook_manager: HookManager, trainer: TrainerView | None, checkpoint: dict[str, Any]
) -> dict[str, Any]:
    """Fire ``on_save_checkpoint``; returns ``{plugin: {version, state_version, state}}``."""
    out: dict[str, Any] = {}
    for name, state in hook_manager.trigger_by_plugin("on_save_checkpoint", trainer=trainer, checkpoint=checkpoint):
        if name is not None:
            plugin = plugins[name]
            out[name] = {"version": plugin.get_version(), "state_version": plugin.state_version, "state": state}
    return out


def restore_states(
    plugins: Plugins,
    hook_manager: HookManager,
    trainer: TrainerView | None,
    checkpoint: dict[str, Any],
    states: dict[str, Any],
) -> None:
    """Fire ``on_load_checkpoint``, each plugin receiving its own (migrated) state."""
    per_plugin: dict[str, Any] = {}
    for name, entry in dict(states or {}).items():
        plugin = plugins.get(name)
        if plugin is None:
            log.warning("checkpoint holds state for plugin %r, which is not loaded now; ignoring it", name)
            continue
        state, version = entry.get("state"), int(entry.get("state_version", plugin.state_version))
        per_plugin[name] = plugin.migrate_state(state, version) if version != plugin.state_version else state
    hook_manager.trigger("on_load_checkpoint", trainer=trainer, checkpoint=checkpoint, state=per_plugin)


def fingerprint(plugins: Plugins, distributions: Mapping[str, str | None], hook_manager: HookManager) -> dict[str, Any]:
    """The plugin set that produces a run: names, versions, distributions, per-event order."""
    listed = [{"name": n, "version": p.get_version(), "distribution": distributions.get(n)} for n, p in plugins.items()]
    order = {e: [h.plugin or h.name for h in hook_manager.ordered(e)] for e in HOOK_NAMES}
    return {"plugins": listed, "order": {e: names for e, names in order.items() if names}}


def check_fingerprint(saved: dict[str, Any], now: dict[str, Any], strict: bool) -> list[str]:
    """How the fingerprint ``now`` differs from ``saved`` (gone or new, versions, order); warns, or raises when strict."""
    before = saved.get("order", {})
    old = {p["name"]: p["version"] for p in saved.get("plugins", [])}
    new = {p["name"]: p["version"] for p in now["plugins"]}
    gone, added, kept = old.keys() - new.keys(), new.keys() - old.keys(), old.keys() & new.keys()
    then = "when the checkpoint was written"
    diffs = [f"plugin {n!r} {old[n]} was active {then} but is not loaded now" for n in sorted(gone)]
    diffs += [f"plugin {n!r} {new[n]} is loaded now but was not {then}" for n in sorted(added)]
    diffs += [f"plugin {n!r} was version {old[n]}, now {new[n]}" for n in sorted(kept) if old[n] != new[n]]
    for event in sorted(set(before) | set(now["order"])):
        a, b = before.get(event, []), now["order"].get(event, [])
        if a != b and set(a) == set(b):
            diffs.append(f"hook order of {event!r} changed: {a} -> {b}")
    if diffs:
        text = "the plugin set differs from the checkpoint's: " + "; ".join(diffs)
        if strict:
            raise PluginDependencyError(text + " (strict resume; load the same plugins or turn strict off)")
        log.warning("%s", text)
    return diffs


def _toggle(plugin: Plugin, enabled: bool, trainer: TrainerView | None, epoch: int | None, step: int | None) -> None:
    if enabled:
        plugin.enable()
        plugin.on_enable(trainer=trainer, epoch=epoch, step=step)
    else:
        plugin.on_disable(trainer=trainer, epoch=epoch, step=step)
        plugin.disable()
