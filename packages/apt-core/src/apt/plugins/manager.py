"""The PluginManager: discover, select, validate, order, set up and tear down plugins.

Lifecycle::

    Registration → Loading → Setup → Execution → Teardown → Unloading
    register_plugin / discover   load / load_from_config   setup_all   trigger_event   teardown_all   unload

Selection (``load_from_config``): ``plugins:`` absent → every installed plugin;
``plugins: [a, b]`` → exactly those; ``disable_plugins: [c]`` turns one off;
``APT_DISABLE_PLUGIN_AUTOLOAD=1`` → only those named in ``plugins:``. Names are checked
against installed metadata before any plugin code is imported.

Failures: a plugin that fails to import, validate or set up is reported (name,
distribution, version, cause) in :attr:`PluginManager.failures` and the others still
load, except those that require it. A plugin the config names explicitly, or any
plugin under ``training.plugin_errors: raise``, makes the failure an error. Config
values, conflicts and requirement cycles are always errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from pydantic import BaseModel
from pydantic import ValidationError

from apt.core.config import APTConfig
from apt.core.config import config_error_from_validation
from apt.core.config import did_you_mean
from apt.core.registry import ProviderRegistry
from apt.core.schedules import Schedule
from apt.errors import AptError
from apt.errors import ConfigError
from apt.errors import PluginConflictError
from apt.errors import PluginDependencyError
from apt.errors import PluginError
from apt.errors import PluginLoadError
from apt.errors import PluginNotFoundError
from apt.errors import PluginValidationError
from apt.plugins._discovery import PluginEntryPoint
from apt.plugins._discovery import discover_entry_points
from apt.plugins._discovery import load_directory
from apt.plugins._fingerprint import diff_fingerprints
from apt.plugins._ordering import resolve_order
from apt.plugins._validate import validate_plugin_class
from apt.plugins.base import Plugin
from apt.plugins.hooks import HOOK_MARK
from apt.plugins.hooks import HookManager
from apt.plugins.hooks import resolve_event
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES


__all__ = [
    "AUTOLOAD_ENV",
    "PluginFailure",
    "PluginManager",
    "PluginTeardownError",
    "autoload_disabled",
    "unselected_reason",
]

log = logging.getLogger("apt.plugins")

AUTOLOAD_ENV = "APT_DISABLE_PLUGIN_AUTOLOAD"


# --- selection: the one place the config and the autoload switch pick plugins ----------
# (load_from_config and `apt plugins list` both ask these, so the two never disagree)


def autoload_disabled() -> bool:
    """Whether ``APT_DISABLE_PLUGIN_AUTOLOAD`` is set to ``1``, ``true``, ``yes`` or ``on``."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def unselected_reason(name: str, config: APTConfig) -> str | None:
    """Why a run with ``config`` would not load the installed plugin ``name``; None if it would.

    Reads the config and the environment only: no plugin code is imported.
    """
    if name in config.disable_plugins:
        return "listed in disable_plugins"
    if config.plugins is not None:
        return None if name in config.plugins else "not named in the config's plugins: list"
    if autoload_disabled():
        return f"{AUTOLOAD_ENV} is set and the config does not name it"
    return None


class PluginTeardownError(AptError):
    """One or more plugins' ``teardown`` raised; ``.errors`` holds ``(plugin, exception)`` pairs."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        lines = "; ".join(f"plugin {n!r}: {type(e).__name__}: {e}" for n, e in errors)
        super().__init__(f"{len(errors)} plugin teardown(s) failed (every teardown still ran): {lines}")
        self.errors = errors


@dataclass
class PluginFailure:
    """Why a plugin did not load: the stage, the cause, and the requirement chain if any."""

    name: str
    stage: str  # "import" | "validate" | "requires" | "setup"
    error: BaseException
    distribution: str | None = None
    version: str | None = None
    chain: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return str(self.error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "distribution": self.distribution,
            "version": self.version,
            "error": str(self.error),
            "chain": self.chain,
        }


@dataclass
class _Candidate:
    name: str
    source: str  # "registered" | "entry-point" | "directory"
    cls: type[Plugin] | None = None
    entry_point: PluginEntryPoint | None = None

    @property
    def distribution(self) -> str | None:
        return self.entry_point.distribution if self.entry_point else None

    @property
    def dist_version(self) -> str | None:
        return self.entry_point.version if self.entry_point else None

    def where(self) -> str:
        if self.entry_point and self.entry_point.distribution:
            return f" ({self.entry_point.distribution} {self.entry_point.version})"
        return ""


class PluginManager:
    """Manages plugin discovery, ordering and lifecycle.

    >>> plugin_manager.register_plugin('my_plugin', MyPlugin)
    >>> plugin_manager.load_from_config(APTConfig(plugins=['my_plugin']))
    >>> plugin_manager.setup_all()
    >>> plugin_manager.trigger_event('on_epoch_start', epoch=1)
    >>> plugin_manager.teardown_all()

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
        self._candidates: dict[str, _Candidate] = {}
        self._plugins: dict[str, Plugin] = {}  # loaded, in resolved order once resolved
        self._explicit: set[str] = set()
        self._strict = False
        self._discovered = False

    # --- registration and discovery ---------------------------------------------------

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
        self._candidates[name] = _Candidate(name, "registered", cls=plugin_class)

    def discover(self, path: str | Path | None = None) -> list[str]:
        """Find installed plugins (entry points, metadata only) and, with ``path``, a plugin directory.

        Returns the names found. A directory's modules are imported (the user named it).
        """
        names = []
        if path is not None:
            for cls in load_directory(path):
                name = _class_name(cls)
                self._candidates[name] = _Candidate(name, "directory", cls=cls)
                names.append(name)
            return names
        by_name: dict[str, list[PluginEntryPoint]] = {}
        for ep in discover_entry_points(self.entry_point_group):
            by_name.setdefault(ep.name, []).append(ep)
        for name, eps in by_name.items():
            if len(eps) > 1:
                dists = ", ".join(f"{e.distribution} {e.version}" for e in eps)
                self.failures[name] = PluginFailure(
                    name,
                    "import",
                    PluginConflictError(
                        f"plugin name {name!r} is provided by several distributions ({dists}); uninstall all but one",
                        plugin=name,
                    ),
                )
                continue
            if name in self._candidates and self._candidates[name].source != "entry-point":
                continue  # code registration wins over an installed entry point of the same name
            self._candidates[name] = _Candidate(name, "entry-point", entry_point=eps[0])
            names.append(name)
        self._discovered = True
        return names

    def _ensure_discovered(self) -> None:
        if not self._discovered:
            self.discover()

    def available(self) -> list[str]:
        """Names of every plugin that could load (registered or installed), sorted."""
        self._ensure_discovered()
        return sorted(self._candidates)

    def list_plugins(self) -> list[str]:
        """Names of every known plugin (registered or installed), as in the original API."""
        return self.available()

    def entry_point(self, name: str) -> PluginEntryPoint | None:
        cand = self._candidates.get(name)
        return cand.entry_point if cand else None

    # --- loading ----------------------------------------------------------------------

    def load(self, name: str, config: Any = None) -> Plugin:
        """Import (if needed), validate and instantiate plugin ``name`` with its config section.

        :param config: the plugin's section: a mapping, a pydantic model instance, or None.
        :raises PluginNotFoundError: unknown name (the message lists the installed ones).
        :raises ConfigError: the section fails the plugin's ``config_model`` (with the key path).
        :raises PluginLoadError, PluginValidationError: import or contract failures.

        A plugin loaded by name is explicit: :meth:`setup_all` raises if its requirements
        are not loaded (instead of leaving it out with a warning).
        """
        plugin = self._load(name, config)
        self._explicit.add(name)
        return plugin

    def _load(self, name: str, config: Any = None) -> Plugin:
        if name in self._plugins:
            return self._plugins[name]
        self._ensure_discovered()
        cand = self._candidates.get(name)
        if cand is None:
            raise self._not_found(name, "load")
        cls = cand.cls if cand.cls is not None else cand.entry_point.load()  # type: ignore[union-attr]
        cand.cls = cls
        validate_plugin_class(name, cls, cand.where())
        plugin = self._instantiate(name, cls, config, cand.where())
        try:
            own = plugin.get_name()
        except NotImplementedError:
            plugin._apt_name = own = name  # a nameless class takes its registration name
        if own != name:
            raise PluginValidationError(
                f"plugin {name!r}{cand.where()}: its class {cls.__qualname__} calls itself {own!r}; the entry-point "
                "or registration name must equal the plugin's name",
                plugin=name,
            )
        self._plugins[name] = plugin
        self.failures.pop(name, None)
        return plugin

    def _instantiate(self, name: str, cls: type[Plugin], config: Any, where: str) -> Plugin:
        model = cls.config_model
        if isinstance(config, BaseModel) and (model is None or isinstance(config, model)):
            cfg: Any = config
        else:
            section = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
            if model is not None:
                try:
                    cfg = model.model_validate(section)
                except ValidationError as exc:
                    raise config_error_from_validation(exc, model, prefix=name) from None
            else:
                cfg = section
        try:
            plugin = cls(cfg)
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {name!r}{where}: creating {cls.__qualname__}(config) failed: {type(exc).__name__}: {exc}",
                plugin=name,
            ) from exc
        if not hasattr(plugin, "_enabled"):  # a subclass __init__ that skipped super().__init__
            Plugin.__init__(plugin, cfg)
        return plugin

    def load_from_config(self, config: APTConfig | None = None) -> list[Plugin]:
        """Select, load and order plugins as ``config`` says; returns them in resolved order."""
        config = config if config is not None else APTConfig()
        self._ensure_discovered()
        known = set(self._candidates)
        # a section for a plugin that failed discovery (two distributions claim its name) is
        # not a typo: let the name checks below report the real cause
        config.check_sections(known | set(self.failures))
        self.schedule = Schedule(config.schedules)
        self.schedule.bind(config.training.max_epochs, config.training.steps_per_epoch)
        self.hook_manager.error_policy = config.training.plugin_errors
        self._strict = config.training.plugin_errors == "raise"

        for name in [*(config.plugins or []), *config.disable_plugins]:
            if name not in known:
                raise self._not_found(name, "config")
        self.schedule.check_plugins(known)
        if config.plugins is not None:
            candidates = list(dict.fromkeys(config.plugins))
            self._explicit |= set(candidates)
        else:
            if autoload_disabled():
                log.info("%s is set: loading no plugins unless the config names them", AUTOLOAD_ENV)
            candidates = sorted(n for n in known if n not in self.failures)
        selected = [n for n in candidates if unselected_reason(n, config) is None]

        errors: list[BaseException] = []
        for name in selected:
            try:
                self._load(name, config.section(name))
            except ConfigError:
                raise
            except PluginError as exc:
                self._fail(name, "import" if isinstance(exc, PluginLoadError) else "validate", exc)
                if name in self._explicit or self._strict:
                    errors.append(exc)
        errors += self._resolve()
        if errors:
            raise (
                errors[0]
                if len(errors) == 1
                else PluginLoadError(f"{len(errors)} plugins failed to load: " + "; ".join(str(e) for e in errors))
            )
        return self.loaded()

    def _fail(self, name: str, stage: str, error: BaseException, chain: list[str] | None = None) -> None:
        cand = self._candidates.get(name)
        failure = PluginFailure(
            name,
            stage,
            error,
            cand.distribution if cand else None,
            cand.dist_version if cand else None,
            chain or [],
        )
        self.failures[name] = failure
        plugin = self._plugins.pop(name, None)
        if plugin is not None:
            self.hook_manager.unregister_owner(plugin)
            self.registry.unregister_plugin(name)
        log.warning("plugin %r not loaded (%s): %s", name, stage, error)

    # --- resolution -------------------------------------------------------------------

    def _resolve(self) -> list[BaseException]:
        """Check requirements and conflicts, detect cycles, compute the order."""
        errors: list[BaseException] = []
        changed = True
        while changed:  # a failed plugin fails its dependents, transitively
            changed = False
            for name, plugin in list(self._plugins.items()):
                problem = self._requirement_problem(name, plugin)
                if problem is not None:
                    message, chain = problem
                    exc = PluginDependencyError(message, plugin=name)
                    self._fail(name, "requires", exc, chain)
                    if name in self._explicit or self._strict:
                        errors.append(exc)
                    changed = True
        for name, plugin in self._plugins.items():
            for spec in plugin.conflicts:
                other = Requirement(spec)
                if other.name in self._plugins and other.name != name:
                    version = self._plugins[other.name].get_version()
                    if not other.specifier or other.specifier.contains(version, prereleases=True):
                        raise PluginConflictError(
                            f"plugins {name!r} and {other.name!r} conflict ({name!r} declares conflicts: {spec!r}); "
                            f"turn one off, e.g. disable_plugins: [{other.name}]",
                            plugin=name,
                            other=other.name,
                        )
        self._order_plugins()
        return errors

    def _requirement_problem(self, name: str, plugin: Plugin) -> tuple[str, list[str]] | None:
        for spec in plugin.requires:
            req = Requirement(spec)
            dep = req.name
            if dep in self._plugins:
                version = self._plugins[dep].get_version()
                if req.specifier and not req.specifier.contains(version, prereleases=True):
                    return (
                        f"plugin {name!r} requires {spec!r} but {dep} {version} is loaded; install a matching "
                        f"version (pip install '{self._dist_hint(dep)}{req.specifier}')",
                        [name, dep],
                    )
                continue
            if dep in self.failures:
                cause = self.failures[dep]
                chain = [name, *(cause.chain or [dep])]
                return (
                    f"plugin {name!r} requires {dep!r}, which failed: {' -> '.join(chain)}: {cause.message}",
                    chain,
                )
            if dep in self._candidates:
                return (
                    f"plugin {name!r} requires {dep!r}, which is installed but not selected; add {dep!r} to "
                    "plugins: [...] (or remove it from disable_plugins)",
                    [name, dep],
                )
            return (
                f"plugin {name!r} requires {spec!r}, which is not installed; install it "
                f"(pip install apt-plugin-{dep}) or turn {name!r} off",
                [name, dep],
            )
        return None

    def _order_plugins(self) -> None:
        requires = {n: [Requirement(s).name for s in p.requires] for n, p in self._plugins.items()}
        order, effective = resolve_order(requires, {n: p.priority for n, p in self._plugins.items()})
        self._plugins = {n: self._plugins[n] for n in order}
        self.hook_manager.set_plugin_order({n: (effective[n], i) for i, n in enumerate(order)})

    def _dist_hint(self, name: str) -> str:
        cand = self._candidates.get(name)
        return cand.distribution if cand and cand.distribution else f"apt-plugin-{name}"

    # --- setup, dispatch, teardown -------------------------------------------------------

    def setup_all(self) -> None:
        """Set up every loaded plugin in resolved order and register its hooks.

        Requirements are checked (and the order computed) again first: plugins may have
        been loaded or unloaded one by one since :meth:`load_from_config`.
        """
        errors: list[BaseException] = self._resolve()
        for name, plugin in list(self._plugins.items()):
            if plugin.is_setup() or name not in self._plugins:
                continue
            try:
                self._setup_one(name, plugin)
            except PluginConflictError:
                raise
            except Exception as exc:
                cand = self._candidates.get(name)
                where = cand.where() if cand else ""
                err = PluginLoadError(
                    f"plugin {name!r}{where}: setup failed: {type(exc).__name__}: {exc}",
                    plugin=name,
                    distribution=cand.distribution if cand else None,
                    version=cand.dist_version if cand else None,
                )
                err.__cause__ = exc
                self._fail(name, "setup", err)
                if name in self._explicit or self._strict:
                    errors.append(err)
                errors += self._resolve()
        if errors:
            raise errors[0]
        for name, plugin in self._plugins.items():
            if self.schedule.is_scheduled(name) and not self.schedule.should_enable_plugin(name, epoch=0, step=0):
                plugin._enabled = False  # waits for its scheduled boundary; no on_disable at start
                self.hook_manager._owner_enabled_changed(plugin)

    def _setup_one(self, name: str, plugin: Plugin) -> None:
        # what setup() registers (providers, functions) is attributed to the plugin
        self.registry._current_plugin = (name, plugin.get_version())
        self.hook_manager._setup_owner = plugin
        try:
            plugin.setup(self.registry, self.hook_manager)
            plugin.registry, plugin.hook_manager = self.registry, self.hook_manager
            for event, attr, priority, condition in _handler_specs(type(plugin)):
                self.hook_manager.register(
                    event, getattr(plugin, attr), priority=priority, condition=condition, owner=plugin
                )
        except BaseException:
            # a half-set-up plugin leaves nothing behind (a provider conflict re-raises)
            self.hook_manager.unregister_owner(plugin)
            self.registry.unregister_plugin(name)
            raise
        finally:
            self.registry._current_plugin = None
            self.hook_manager._setup_owner = None
        plugin._setup = True

    def trigger_event(self, event: str, **kwargs: Any) -> list[Any]:
        """Trigger ``event`` on every enabled handler (see :meth:`HookManager.trigger`)."""
        return self.hook_manager.trigger(event, **kwargs)

    def teardown_all(self) -> None:
        """Tear plugins down in reverse order; every teardown runs; errors are raised together."""
        errors: list[tuple[str, BaseException]] = []
        for name in reversed(list(self._plugins)):
            plugin = self._plugins[name]
            if not plugin.is_setup():
                continue
            try:
                plugin.teardown()
            except Exception as exc:
                errors.append((name, exc))
            finally:
                plugin._setup = False
                self.hook_manager.unregister_owner(plugin)
                self.registry.unregister_plugin(name)
        if errors:
            raise PluginTeardownError(errors)

    def unload(self, name: str) -> None:
        """Tear down (if set up) and forget plugin ``name``; it can be loaded again."""
        plugin = self._plugins.get(name)
        if plugin is None:
            raise self._not_found(name, "unload")
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
            plugin._setup = False
            self.hook_manager.unregister_owner(plugin)
            self.registry.unregister_plugin(name)
            del self._plugins[name]
            self._order_plugins()

    # --- queries ----------------------------------------------------------------------

    def get_plugin(self, name: str) -> Plugin:
        """The loaded plugin ``name``."""
        plugin = self._plugins.get(name)
        if plugin is None:
            raise self._not_found(name, "get_plugin")
        return plugin

    def loaded(self) -> list[Plugin]:
        """Loaded plugins in resolved order."""
        return list(self._plugins.values())

    def list_loaded(self) -> list[str]:
        return list(self._plugins)

    def describe(self, name: str) -> dict[str, Any]:
        """Metadata of a loaded plugin plus where it came from."""
        plugin = self.get_plugin(name)
        cand = self._candidates.get(name)
        hooks = sorted({h.event for h in self.hook_manager.handlers() if h.owner is plugin})
        return {
            **plugin.get_metadata(),
            "distribution": cand.distribution if cand else None,
            "source": cand.source if cand else "registered",
            "enabled": plugin.is_enabled(),
            "hooks": hooks,
        }

    def _not_found(self, name: str, where: str) -> PluginNotFoundError:
        known = sorted(self._candidates)
        hint = did_you_mean(name, known)
        listing = ", ".join(known) or "none"
        if name in self.failures and name not in self._candidates:
            text = f"plugin {name!r} cannot load: {self.failures[name].message}"
        elif where == "config":
            text = f"unknown plugin {name!r}{hint} named in the config; installed plugins: {listing}"
        elif name in self._candidates:
            text = f"plugin {name!r} is installed but not loaded; load it first (plugin_manager.load({name!r}))"
        else:
            text = f"unknown plugin {name!r}{hint}; installed plugins: {listing}"
        return PluginNotFoundError(text, plugin=name)

    def statistics(self) -> dict[str, Any]:
        """Hook statistics per event and handler (for summary.json)."""
        return self.hook_manager.get_stats()

    # --- schedules ----------------------------------------------------------------------

    def apply_schedule(self, trainer: Any = None, epoch: int | None = None, step: int | None = None) -> bool:
        """Enable / disable scheduled plugins at this boundary; True if anything changed."""
        changed = False
        for name, plugin in self._plugins.items():
            if not self.schedule.is_scheduled(name) or plugin.failure is not None:
                continue  # a plugin disabled by an error stays off, whatever its schedule says
            want = self.schedule.should_enable_plugin(name, epoch=epoch, step=step)
            if want == plugin.is_enabled():
                continue
            changed = True
            if want:
                plugin.enable()
                log.info("schedule: enabling plugin %r at epoch %s, step %s", name, epoch, step)
                plugin.on_enable(trainer=trainer, epoch=epoch, step=step)
            else:
                log.info("schedule: disabling plugin %r at epoch %s, step %s", name, epoch, step)
                plugin.on_disable(trainer=trainer, epoch=epoch, step=step)
                plugin.disable()
        return changed

    # --- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Which plugins are enabled (schedules, errors), why any was disabled by an error, and the hook statistics."""
        return {
            "enabled": {n: p.is_enabled() for n, p in self._plugins.items()},
            "failed": {n: p.failure for n, p in self._plugins.items() if p.failure is not None},
            "schedule": self.schedule.to_dict(),
            "stats": self.statistics(),
        }

    def load_state_dict(self, state: dict[str, Any], trainer: Any = None) -> bool:
        """Restore enabled flags, calling ``on_enable``/``on_disable`` for plugins whose state differs.

        A plugin that a hook error had disabled stays disabled, without ``on_disable`` (as in
        the run that wrote the state), and its schedule no longer enables it.

        Returns True if any plugin changed state (the model may have changed: the
        trainer then syncs its optimizer before loading weights).
        """
        changed = False
        failed = dict(state.get("failed") or {})
        for name, enabled in dict(state.get("enabled", {})).items():
            plugin = self._plugins.get(name)
            if plugin is None:
                continue
            if name in failed:
                changed = changed or plugin.is_enabled()
                plugin._disable_for_error(str(failed[name]))
                log.warning("plugin %r stays disabled: before the checkpoint, %s", name, failed[name])
                continue
            if enabled == plugin.is_enabled():
                continue
            changed = True
            if enabled:
                plugin.enable()
                plugin.on_enable(trainer=trainer, epoch=None, step=None)
            else:
                plugin.on_disable(trainer=trainer, epoch=None, step=None)
                plugin.disable()
        return changed

    def collect_states(self, trainer: Any, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Fire ``on_save_checkpoint``; returns ``{plugin: {version, state_version, state}}``."""
        out: dict[str, Any] = {}
        for name, state in self.hook_manager.trigger_by_plugin(
            "on_save_checkpoint", trainer=trainer, checkpoint=checkpoint
        ):
            if name is None:
                continue
            plugin = self._plugins[name]
            out[name] = {"version": plugin.get_version(), "state_version": plugin.state_version, "state": state}
        return out

    def restore_states(self, trainer: Any, checkpoint: dict[str, Any], states: dict[str, Any]) -> None:
        """Fire ``on_load_checkpoint``, each plugin receiving its own (migrated) state."""
        per_plugin: dict[str, Any] = {}
        for name, entry in dict(states or {}).items():
            plugin = self._plugins.get(name)
            if plugin is None:
                log.warning("checkpoint holds state for plugin %r, which is not loaded now; ignoring it", name)
                continue
            state, version = entry.get("state"), int(entry.get("state_version", plugin.state_version))
            if version != plugin.state_version:
                state = plugin.migrate_state(state, version)
            per_plugin[name] = state
        self.hook_manager.trigger("on_load_checkpoint", trainer=trainer, checkpoint=checkpoint, state=per_plugin)

    def fingerprint(self) -> dict[str, Any]:
        """The plugin set that produces a run: names, versions, distributions, per-event order."""
        plugins = []
        for name, plugin in self._plugins.items():
            cand = self._candidates.get(name)
            plugins.append(
                {"name": name, "version": plugin.get_version(), "distribution": cand.distribution if cand else None}
            )
        order = {
            e: [h.plugin or h.name for h in self.hook_manager.ordered(e)]
            for e in HOOK_NAMES
            if any(True for _ in self.hook_manager.ordered(e))
        }
        return {"plugins": plugins, "order": order}

    def check_fingerprint(self, saved: dict[str, Any] | None, strict: bool = False) -> list[str]:
        """Differences between ``saved`` and the current fingerprint; warns, or raises when strict."""
        if not saved:
            return []
        diffs = diff_fingerprints(saved, self.fingerprint())
        if diffs:
            text = "the plugin set differs from the checkpoint's: " + "; ".join(diffs)
            if strict:
                raise PluginDependencyError(text + " (strict resume; load the same plugins or turn strict off)")
            log.warning("%s", text)
        return diffs

    def __repr__(self) -> str:
        return f"PluginManager(loaded={self.list_loaded()}, available={sorted(self._candidates)})"


def _class_name(cls: type[Plugin]) -> str:
    """The name a plugin class goes by, found without its config.

    The ``name`` attribute; else what an overridden ``get_name()`` returns (the original
    API's style: :meth:`load` checks it against the registration name); else, for a class
    with no name at all, its class name in lower case, which :meth:`load` lets it take.
    """
    if cls.name:
        return str(cls.name)
    if cls.get_name is not Plugin.get_name:
        # such a get_name() returns a constant: ask an instance that skipped __init__ first
        # (no config needed), then one made with the default config
        for make in (lambda: cls.__new__(cls), lambda: cls()):
            try:
                return str(make().get_name())
            except Exception:  # noqa: BLE001 - try the next way; load() reports a real problem
                continue
    return cls.__name__.lower()


def _handler_specs(cls: type[Plugin]) -> Iterator[tuple[str, str, int | None, Any]]:
    """``(event, attribute, priority, condition)`` for each handler of a plugin class.

    A handler is a method named after an event (or an alias) that overrides the base
    class's, or a method marked with ``@hook``.
    """
    for event in [*HOOK_NAMES, *ALIASES]:
        method = getattr(cls, event, None)
        if method is None or method is getattr(Plugin, event, None):
            continue
        if any(resolve_event(marked) == resolve_event(event) for marked, _, _ in getattr(method, HOOK_MARK, ())):
            continue  # its @hook mark registers it below, with the mark's priority and condition
        yield event, event, None, None
    for attr in dir(cls):
        marks = getattr(getattr(cls, attr, None), HOOK_MARK, None)
        for event, priority, condition in marks or ():
            yield event, attr, priority, condition


def handled_events(cls: type[Plugin]) -> set[str]:
    """The events (canonical names) a plugin class has handlers for, found without instantiating it."""
    return {resolve_event(event) for event, _, _, _ in _handler_specs(cls)}
