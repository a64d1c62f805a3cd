"""The PluginManager: find, load, order, set up and tear down plugins; dispatch to them; keep their
run state. The rules live in :mod:`apt.plugins._loading` and :mod:`apt.plugins._state`.

A plugin that fails to import, validate or set up is recorded in :attr:`PluginManager.failures`
(name, distribution, version, cause) and the others still load, except those that require it.
A plugin the config names explicitly, or any plugin under ``training.plugin_errors: raise``,
makes its failure an error. Config values, conflicts and requirement cycles are always errors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from apt.core.config import APTConfig
from apt.core.config import did_you_mean
from apt.core.registry import ProviderRegistry
from apt.core.schedules import Schedule
from apt.errors import ConfigError
from apt.errors import PluginConflictError
from apt.errors import PluginDependencyError
from apt.errors import PluginError
from apt.errors import PluginLoadError
from apt.errors import PluginNotFoundError
from apt.errors import PluginTeardownError
from apt.errors import PluginValidationError
from apt.plugins._discovery import PluginEntryPoint
from apt.plugins._discovery import discover_entry_points
from apt.plugins._discovery import load_directory
from apt.plugins._loading import Candidate
from apt.plugins._loading import PluginFailure
from apt.plugins._loading import check_conflicts
from apt.plugins._loading import instantiate
from apt.plugins._loading import requirement_problem
from apt.plugins._loading import resolve_order
from apt.plugins._loading import select
from apt.plugins._state import apply_schedule
from apt.plugins._state import check_fingerprint
from apt.plugins._state import collect_states
from apt.plugins._state import fingerprint
from apt.plugins._state import load_plugins_state
from apt.plugins._state import plugins_state
from apt.plugins._state import restore_states
from apt.plugins.base import Plugin
from apt.plugins.base import handler_specs
from apt.plugins.hooks import HookManager
from apt.plugins.view import TrainerView


__all__ = ["PluginFailure", "PluginManager", "PluginTeardownError"]

log = logging.getLogger("apt.plugins")


class PluginManager:
    """Manages plugin discovery, ordering and lifecycle: register_plugin / discover → load /
    load_from_config → setup_all → trigger_event → teardown_all → unload.

    :param registry: provider registry plugins register into (a fresh one by default).
    :param hook_manager: hook manager plugins' handlers go to (a fresh one by default).
    :param entry_point_group: the entry-point group to discover.
    """

    def __init__(
        self,
        registry: ProviderRegistry | None = None,
        hook_manager: HookManager | None = None,
        *,
        entry_point_group: str = "apt.plugins",
    ) -> None:
        self.registry = registry if registry is not None else ProviderRegistry()
        self.hook_manager = hook_manager if hook_manager is not None else HookManager()
        self.schedule = Schedule()
        self.entry_point_group = entry_point_group
        self.failures: dict[str, PluginFailure] = {}
        self._candidates: dict[str, Candidate] = {}
        self._plugins: dict[str, Plugin] = {}  # loaded, in resolved order once resolved
        self._explicit: set[str] = set()
        self._strict = False
        self._discovered = False

    def register_plugin(self, name: str, plugin_class: type[Plugin]) -> None:
        """Make ``plugin_class`` available under ``name`` (it still has to be loaded)."""
        if not (isinstance(plugin_class, type) and issubclass(plugin_class, Plugin)):
            raise PluginValidationError(
                f"register_plugin({name!r}, ...) needs a subclass of apt.plugins.Plugin, got {plugin_class!r}",
                plugin=name,
            )
        existing = self._candidates.get(name)
        if existing is not None and existing.cls is not plugin_class and existing.source != "entry-point":
            raise PluginConflictError(
                f"plugin name {name!r} is already registered to {existing.cls!r}; unregister it first "
                f"(unload({name!r})) or choose another name",
                plugin=name,
            )
        self._candidates[name] = Candidate(name, "registered", cls=plugin_class)

    def discover(self, path: str | Path | None = None) -> list[str]:
        """Names of the installed plugins (entry points, metadata only), or with ``path`` of the
        plugins in a directory (its modules are imported: the user named it)."""
        if path is not None:
            classes = load_directory(path)
            self._candidates |= {name: Candidate(name, "directory", cls=cls) for name, cls in classes.items()}
            return list(classes)
        by_name: dict[str, list[PluginEntryPoint]] = {}
        for ep in discover_entry_points(self.entry_point_group):
            by_name.setdefault(ep.name, []).append(ep)
        found = []
        for name, eps in by_name.items():
            if len(eps) > 1:
                dists = ", ".join(f"{e.distribution} {e.version}" for e in eps)
                error = PluginConflictError(
                    f"plugin name {name!r} is provided by several distributions ({dists}); uninstall all but one",
                    plugin=name,
                )
                self.failures[name] = PluginFailure(name, "import", error)
            elif name not in self._candidates or self._candidates[name].source == "entry-point":
                # (code registration wins over an installed entry point of the same name)
                self._candidates[name] = Candidate(name, "entry-point", entry_point=eps[0])
                found.append(name)
        self._discovered = True
        return found

    def available(self) -> list[str]:
        """Names of every known plugin (registered or installed), sorted."""
        if not self._discovered:
            self.discover()
        return sorted(self._candidates)

    list_plugins = available  # the original API's name

    def entry_point(self, name: str) -> PluginEntryPoint | None:
        """The entry point plugin ``name`` was discovered by (None if registered in code or unknown)."""
        cand = self._candidates.get(name)
        return cand.entry_point if cand else None

    def load(self, name: str, config: Any = None) -> Plugin:
        """Import (if needed), validate and instantiate plugin ``name`` with its config section (a
        mapping, a pydantic model or None). Raises PluginNotFoundError, ConfigError, PluginLoadError or
        PluginValidationError. A plugin loaded by name is explicit: its later failures are errors."""
        plugin = self._load(name, config)
        self._explicit.add(name)
        return plugin

    def _load(self, name: str, config: Any = None) -> Plugin:
        if name not in self._plugins:
            if name not in self.available():
                raise self._not_found(name)
            self._plugins[name] = instantiate(self._candidates[name], config)
            self.failures.pop(name, None)
        return self._plugins[name]

    def load_from_config(self, config: APTConfig | None = None) -> list[Plugin]:
        """Select, load and order plugins as ``config`` says; returns them in resolved order."""
        config = config if config is not None else APTConfig()
        known = set(self.available())
        # a section for a plugin that failed discovery (two distributions claim its name) is
        # not a typo: let the name checks below report the real cause
        config.check_sections(known | set(self.failures))
        self.schedule = Schedule(config.schedules)
        self.schedule.bind(config.training.max_epochs, config.training.steps_per_epoch)
        self.hook_manager.error_policy = config.training.plugin_errors
        self._strict = config.training.plugin_errors == "raise"
        for name in [*(config.plugins or []), *config.disable_plugins]:
            if name not in known:
                raise self._not_found(name, in_config=True)
        self.schedule.check_plugins(known)
        self._explicit |= set(config.plugins or [])
        errors: list[BaseException] = []
        for name in select(config, known, self.failures):
            try:
                self._load(name, config.section(name))
            except ConfigError:
                raise
            except PluginError as exc:
                errors += self._fail(name, "import" if isinstance(exc, PluginLoadError) else "validate", exc)
        errors += self._resolve()
        if len(errors) > 1:
            raise PluginLoadError(f"{len(errors)} plugins failed to load: " + "; ".join(str(e) for e in errors))
        if errors:
            raise errors[0]
        return self.loaded()

    def _fail(self, name: str, stage: str, error: BaseException, chain: list[str] | None = None) -> list[BaseException]:
        """Record that ``name`` did not load and drop it; returns ``[error]`` if that is an error
        (the plugin was named explicitly, or plugin errors are strict), else ``[]``."""
        cand = self._candidates[name]
        self.failures[name] = PluginFailure(name, stage, error, cand.distribution, cand.version, chain or [])
        plugin = self._plugins.pop(name, None)
        if plugin is not None:
            self._forget(name, plugin)
        log.warning("plugin %r not loaded (%s): %s", name, stage, error)
        return [error] if name in self._explicit or self._strict else []

    def _resolve(self) -> list[BaseException]:
        """Fail the plugins whose requirements are not met (transitively), check conflicts, order."""
        errors: list[BaseException] = []
        changed = True
        while changed:
            changed = False
            for name, plugin in list(self._plugins.items()):
                problem = requirement_problem(plugin, self._plugins, self.failures, self._candidates)
                if problem is not None:
                    errors += self._fail(name, "requires", PluginDependencyError(problem[0], plugin=name), problem[1])
                    changed = True
        check_conflicts(self._plugins)
        self._order_plugins()
        return errors

    def _order_plugins(self) -> None:
        order, effective = resolve_order(self._plugins)
        self._plugins = {n: self._plugins[n] for n in order}
        self.hook_manager.set_plugin_order({n: (effective[n], i) for i, n in enumerate(order)})

    def setup_all(self) -> None:
        """Set up every loaded plugin in resolved order and register its hooks. Requirements are
        checked again first: plugins may have been loaded or unloaded one by one since."""
        errors = self._resolve()
        for name, plugin in list(self._plugins.items()):
            if plugin.is_setup() or name not in self._plugins:
                continue
            try:
                self._setup_one(name, plugin)
            except PluginConflictError:
                raise
            except Exception as exc:
                cand = self._candidates[name]
                err = PluginLoadError(
                    f"{cand.who}: setup failed: {type(exc).__name__}: {exc}",
                    plugin=name,
                    distribution=cand.distribution,
                    version=cand.version,
                )
                err.__cause__ = exc
                errors += self._fail(name, "setup", err)
                errors += self._resolve()
        if errors:
            raise errors[0]
        for name, plugin in self._plugins.items():
            if self.schedule.is_scheduled(name) and not self.schedule.should_enable_plugin(name, epoch=0, step=0):
                plugin.disable()  # waits for its scheduled boundary; no on_disable at start

    def _setup_one(self, name: str, plugin: Plugin) -> None:
        # what setup() registers (providers, functions) is attributed to the plugin
        self.hook_manager.begin_setup(plugin)
        try:
            with self.registry.registering_for(name, plugin.get_version()):
                plugin.setup(self.registry, self.hook_manager)
                plugin.registry, plugin.hook_manager = self.registry, self.hook_manager
                for event, attr, priority, condition in handler_specs(type(plugin)):
                    self.hook_manager.register(
                        event, getattr(plugin, attr), priority=priority, condition=condition, owner=plugin
                    )
        except BaseException:
            # a half-set-up plugin leaves nothing behind (a provider conflict re-raises)
            self._forget(name, plugin)
            raise
        finally:
            self.hook_manager.begin_setup(None)
        plugin.mark_setup(True)

    def _forget(self, name: str, plugin: Plugin) -> None:
        """Take ``plugin``'s handlers and providers out."""
        plugin.mark_setup(False)
        self.hook_manager.unregister_owner(plugin)
        self.registry.unregister_plugin(name)

    def trigger_event(self, event: str, **kwargs: Any) -> list[Any]:
        """Trigger ``event`` on every enabled handler (see :meth:`HookManager.trigger`)."""
        return self.hook_manager.trigger(event, **kwargs)

    def teardown_all(self) -> None:
        """Tear plugins down in reverse order; every teardown runs; errors are raised together."""
        errors: list[tuple[str, BaseException]] = []
        for name, plugin in reversed(list(self._plugins.items())):
            if not plugin.is_setup():
                continue
            try:
                plugin.teardown()
            except Exception as exc:
                errors.append((name, exc))
            finally:
                self._forget(name, plugin)
        if errors:
            raise PluginTeardownError(errors)

    def unload(self, name: str) -> None:
        """Tear down (if set up) and forget plugin ``name``; it can be loaded again."""
        plugin = self.get_plugin(name)
        dependents = [n for n, p in self._plugins.items() if any(Requirement(s).name == name for s in p.requires)]
        if dependents:
            raise PluginDependencyError(
                f"cannot unload plugin {name!r}: {', '.join(map(repr, dependents))} require(s) it; unload them first",
                plugin=name,
            )
        try:
            if plugin.is_setup():
                plugin.teardown()
        except Exception as exc:
            raise PluginTeardownError([(name, exc)]) from exc
        finally:
            self._forget(name, plugin)
            del self._plugins[name]
            self._order_plugins()

    def get_plugin(self, name: str) -> Plugin:
        """The loaded plugin ``name``."""
        plugin = self._plugins.get(name)
        if plugin is None:
            raise self._not_found(name)
        return plugin

    def loaded(self) -> list[Plugin]:
        """Loaded plugins in resolved order."""
        return list(self._plugins.values())

    def list_loaded(self) -> list[str]:
        """Names of the loaded plugins in resolved order."""
        return list(self._plugins)

    def describe(self, name: str) -> dict[str, Any]:
        """Metadata of a loaded plugin plus where it came from."""
        plugin, cand = self.get_plugin(name), self._candidates[name]
        return {
            **plugin.get_metadata(),
            "distribution": cand.distribution,
            "source": cand.source,
            "enabled": plugin.is_enabled(),
            "hooks": sorted({h.event for h in self.hook_manager.handlers() if h.owner is plugin}),
        }

    def _not_found(self, name: str, in_config: bool = False) -> PluginNotFoundError:
        known = sorted(self._candidates)
        if name in self._candidates:
            text = f"plugin {name!r} is installed but not loaded; load it first (plugin_manager.load({name!r}))"
        elif name in self.failures:
            text = f"plugin {name!r} cannot load: {self.failures[name].message}"
        else:
            text = (
                f"unknown plugin {name!r}{did_you_mean(name, known)}{' named in the config' if in_config else ''}; "
                f"installed plugins: {', '.join(known) or 'none'}"
            )
        return PluginNotFoundError(text, plugin=name)

    # Run state: the rules live in apt.plugins._state.

    def apply_schedule(
        self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None
    ) -> bool:
        """Enable / disable scheduled plugins at this boundary; True if anything changed."""
        return apply_schedule(self._plugins, self.schedule, trainer, epoch, step)

    def state_dict(self) -> dict[str, Any]:
        """Enabled flags, why any plugin was disabled by an error, the schedule and the hook statistics."""
        return plugins_state(self._plugins, self.schedule, self.hook_manager)

    def load_state_dict(self, state: dict[str, Any], trainer: TrainerView | None = None) -> bool:
        """Restore enabled flags (``on_enable``/``on_disable`` where they differ); True if any changed
        (the model may have changed: the trainer syncs its optimizer). Error-disabled plugins stay off."""
        return load_plugins_state(self._plugins, state, trainer)

    def collect_states(self, trainer: TrainerView | None, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Fire ``on_save_checkpoint``; returns ``{plugin: {version, state_version, state}}``."""
        return collect_states(self._plugins, self.hook_manager, trainer, checkpoint)

    def restore_states(self, trainer: TrainerView | None, checkpoint: dict[str, Any], states: dict[str, Any]) -> None:
        """Fire ``on_load_checkpoint``, each plugin receiving its own (migrated) state."""
        restore_states(self._plugins, self.hook_manager, trainer, checkpoint, states)

    def fingerprint(self) -> dict[str, Any]:
        """The plugin set that produces a run: names, versions, distributions, per-event order."""
        dists = {n: self._candidates[n].distribution for n in self._plugins}
        return fingerprint(self._plugins, dists, self.hook_manager)

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        """How the plugin set differs from ``saved`` (gone or new, versions, order); warns, or raises when strict."""
        return check_fingerprint(saved, self.fingerprint(), strict) if saved else []

    def statistics(self) -> dict[str, Any]:
        """Hook statistics per event and handler (for summary.json)."""
        return self.hook_manager.get_stats()

    def __repr__(self) -> str:
        return f"PluginManager(loaded={self.list_loaded()}, available={sorted(self._candidates)})"
