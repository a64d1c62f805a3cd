"""Run state of the plugins: schedules, enabled flags and plugin states in checkpoints, fingerprints.

Functions over the loaded plugins (``{name: plugin}`` in resolved order); the
:class:`~apt.plugins.PluginManager` methods of the same names call them.
"""

from __future__ import annotations

import logging
from typing import Any

from apt.core.schedules import Schedule
from apt.errors import PluginDependencyError
from apt.plugins.base import Plugin
from apt.plugins.hooks import HookManager
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.view import TrainerView


__all__ = ["apply_schedule", "check_fingerprint", "collect_states", "fingerprint", "load_state", "restore_states"]

log = logging.getLogger("apt.plugins")


def apply_schedule(
    plugins: dict[str, Plugin], schedule: Schedule, trainer: TrainerView | None, epoch: int | None, step: int | None
) -> bool:
    """Enable / disable scheduled plugins at this boundary; True if anything changed."""
    changed = False
    for name, plugin in plugins.items():
        if not schedule.is_scheduled(name) or plugin.failure is not None:
            continue  # a plugin disabled by an error stays off, whatever its schedule says
        want = schedule.should_enable_plugin(name, epoch=epoch, step=step)
        if want != plugin.is_enabled():
            changed = True
            log.info(
                "schedule: %s plugin %r at epoch %s, step %s", "enabling" if want else "disabling", name, epoch, step
            )
            _toggle(plugin, want, trainer, epoch, step)
    return changed


def _toggle(plugin: Plugin, enabled: bool, trainer: TrainerView | None, epoch: int | None, step: int | None) -> None:
    if enabled:
        plugin.enable()
        plugin.on_enable(trainer=trainer, epoch=epoch, step=step)
    else:
        plugin.on_disable(trainer=trainer, epoch=epoch, step=step)
        plugin.disable()


def load_state(plugins: dict[str, Plugin], state: dict[str, Any], trainer: TrainerView | None) -> bool:
    """Restore enabled flags, calling ``on_enable``/``on_disable`` where they differ; True if any did.

    A plugin that a hook error had disabled stays disabled, without ``on_disable``.
    """
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
    plugins: dict[str, Plugin], hooks: HookManager, trainer: TrainerView | None, checkpoint: dict[str, Any]
) -> dict[str, Any]:
    """Fire ``on_save_checkpoint``; returns ``{plugin: {version, state_version, state}}``."""
    out: dict[str, Any] = {}
    for name, state in hooks.trigger_by_plugin("on_save_checkpoint", trainer=trainer, checkpoint=checkpoint):
        if name is not None:
            plugin = plugins[name]
            out[name] = {"version": plugin.get_version(), "state_version": plugin.state_version, "state": state}
    return out


def restore_states(
    plugins: dict[str, Plugin],
    hooks: HookManager,
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
    hooks.trigger("on_load_checkpoint", trainer=trainer, checkpoint=checkpoint, state=per_plugin)


def fingerprint(plugins: dict[str, Plugin], distributions: dict[str, str | None], hooks: HookManager) -> dict[str, Any]:
    """The plugin set that produces a run: names, versions, distributions, per-event order."""
    listed = [{"name": n, "version": p.get_version(), "distribution": distributions.get(n)} for n, p in plugins.items()]
    order = {e: [h.plugin or h.name for h in hooks.ordered(e)] for e in HOOK_NAMES}
    return {"plugins": listed, "order": {e: names for e, names in order.items() if names}}


def check_fingerprint(saved: dict[str, Any] | None, now: dict[str, Any], strict: bool) -> list[str]:
    """Differences between ``saved`` and ``now`` (plugins gone or new, versions, order); warns, or raises when strict."""
    if not saved:
        return []
    diffs: list[str] = []
    old = {p["name"]: p["version"] for p in saved.get("plugins", [])}
    new = {p["name"]: p["version"] for p in now["plugins"]}
    for name in sorted(old.keys() - new.keys()):
        diffs.append(f"plugin {name!r} {old[name]} was active when the checkpoint was written but is not loaded now")
    for name in sorted(new.keys() - old.keys()):
        diffs.append(f"plugin {name!r} {new[name]} is loaded now but was not when the checkpoint was written")
    for name in sorted(old.keys() & new.keys()):
        if old[name] != new[name]:
            diffs.append(f"plugin {name!r} was version {old[name]}, now {new[name]}")
    for event in sorted(set(saved.get("order", {})) | set(now["order"])):
        a, b = saved.get("order", {}).get(event, []), now["order"].get(event, [])
        if a != b and set(a) == set(b):
            diffs.append(f"hook order of {event!r} changed: {a} -> {b}")
    if diffs:
        text = "the plugin set differs from the checkpoint's: " + "; ".join(diffs)
        if strict:
            raise PluginDependencyError(text + " (strict resume; load the same plugins or turn strict off)")
        log.warning("%s", text)
    return diffs
