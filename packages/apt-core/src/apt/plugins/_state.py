"""Run state of the plugins: schedules, enabled flags and plugin states in checkpoints, fingerprints.

:class:`RunState` is the part of :class:`~apt.plugins.PluginManager` that deals with it,
over the loaded plugins in resolved order.
"""

from __future__ import annotations

import logging
from typing import Any

from apt.core.schedules import Schedule
from apt.errors import PluginDependencyError
from apt.plugins._loading import Candidate
from apt.plugins.base import Plugin
from apt.plugins.hooks import HookManager
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.view import TrainerView


__all__ = ["RunState"]

log = logging.getLogger("apt.plugins")


class RunState:
    """Schedules, checkpointed plugin state and fingerprints (a base of PluginManager)."""

    schedule: Schedule
    hook_manager: HookManager
    _plugins: dict[str, Plugin]  # loaded, in resolved order
    _candidates: dict[str, Candidate]  # every plugin that could load

    def apply_schedule(
        self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None
    ) -> bool:
        """Enable / disable scheduled plugins at this boundary; True if anything changed."""
        changed = False
        for name, plugin in self._plugins.items():
            if not self.schedule.is_scheduled(name) or plugin.failure is not None:
                continue  # a plugin disabled by an error stays off, whatever its schedule says
            want = self.schedule.should_enable_plugin(name, epoch=epoch, step=step)
            if want != plugin.is_enabled():
                changed = True
                log.info(
                    "schedule: %s plugin %r at epoch %s, step %s",
                    "enabling" if want else "disabling",
                    name,
                    epoch,
                    step,
                )
                _toggle(plugin, want, trainer, epoch, step)
        return changed

    def state_dict(self) -> dict[str, Any]:
        """Enabled flags, why any plugin was disabled by an error, the schedule and the hook statistics."""
        return {
            "enabled": {n: p.is_enabled() for n, p in self._plugins.items()},
            "failed": {n: p.failure for n, p in self._plugins.items() if p.failure is not None},
            "schedule": self.schedule.to_dict(),
            "stats": self.hook_manager.get_stats(),
        }

    def load_state_dict(self, state: dict[str, Any], trainer: TrainerView | None = None) -> bool:
        """Restore enabled flags (``on_enable``/``on_disable`` where they differ); True if any changed
        (the model may have changed: the trainer syncs its optimizer). Error-disabled plugins stay off."""
        changed = False
        failed = dict(state.get("failed") or {})
        for name, enabled in dict(state.get("enabled", {})).items():
            plugin = self._plugins.get(name)
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

    def collect_states(self, trainer: TrainerView | None, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Fire ``on_save_checkpoint``; returns ``{plugin: {version, state_version, state}}``."""
        out: dict[str, Any] = {}
        results = self.hook_manager.trigger_by_plugin("on_save_checkpoint", trainer=trainer, checkpoint=checkpoint)
        for name, state in results:
            if name is not None:
                plugin = self._plugins[name]
                out[name] = {"version": plugin.get_version(), "state_version": plugin.state_version, "state": state}
        return out

    def restore_states(self, trainer: TrainerView | None, checkpoint: dict[str, Any], states: dict[str, Any]) -> None:
        """Fire ``on_load_checkpoint``, each plugin receiving its own (migrated) state."""
        per_plugin: dict[str, Any] = {}
        for name, entry in dict(states or {}).items():
            plugin = self._plugins.get(name)
            if plugin is None:
                log.warning("checkpoint holds state for plugin %r, which is not loaded now; ignoring it", name)
                continue
            state, version = entry.get("state"), int(entry.get("state_version", plugin.state_version))
            per_plugin[name] = plugin.migrate_state(state, version) if version != plugin.state_version else state
        self.hook_manager.trigger("on_load_checkpoint", trainer=trainer, checkpoint=checkpoint, state=per_plugin)

    def fingerprint(self) -> dict[str, Any]:
        """The plugin set that produces a run: names, versions, distributions, per-event order."""
        plugins = [
            {"name": n, "version": p.get_version(), "distribution": self._candidates[n].distribution}
            for n, p in self._plugins.items()
        ]
        order = {e: [h.plugin or h.name for h in self.hook_manager.ordered(e)] for e in HOOK_NAMES}
        return {"plugins": plugins, "order": {e: names for e, names in order.items() if names}}

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        """How the plugin set differs from ``saved`` (gone or new, versions, order); warns, or raises when strict."""
        if not saved:
            return []
        now, before = self.fingerprint(), saved.get("order", {})
        old = {p["name"]: p["version"] for p in saved.get("plugins", [])}
        new = {p["name"]: p["version"] for p in now["plugins"]}
        diffs = [f"plugin {n!r} {old[n]} was active when the checkpoint was written but is not loaded now"
                 for n in sorted(old.keys() - new.keys())]  # fmt: skip
        diffs += [f"plugin {n!r} {new[n]} is loaded now but was not when the checkpoint was written"
                  for n in sorted(new.keys() - old.keys())]  # fmt: skip
        diffs += [f"plugin {n!r} was version {old[n]}, now {new[n]}" for n in sorted(old.keys() & new.keys())
                  if old[n] != new[n]]  # fmt: skip
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
