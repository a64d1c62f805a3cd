"""What ``apt plugins`` reports: metadata rows, load results and order explanations.

``static_rows`` reads metadata only (entry points, and the plugin classes' literal
attributes parsed by :mod:`apt.plugins._static`); ``load_all``, ``apply_check`` and
``order_report`` load plugins through the kernel exactly as a run would. The commands in
:mod:`apt.cli._plugins` print what these return.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import nullcontext
from typing import TYPE_CHECKING
from typing import Any


if TYPE_CHECKING:
    from apt.core import APTConfig
    from apt.plugins import PluginEntryPoint
    from apt.plugins import PluginManager


__all__ = ["apply_check", "load_all", "order_report", "static_rows"]


def _autoload_disabled() -> bool:
    from apt.plugins import AUTOLOAD_ENV

    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _entry_points() -> list[PluginEntryPoint]:
    from apt.plugins import discover_entry_points

    return discover_entry_points()


def static_rows(config: APTConfig) -> list[dict[str, Any]]:
    """One row per installed plugin entry point, from metadata and source only (no plugin import).

    :param config: decides ``disabled`` (``plugins`` / ``disable_plugins``); the
        ``APT_DISABLE_PLUGIN_AUTOLOAD`` environment variable is honoured too.
    :returns: dicts with the keys of :data:`_COLUMNS` plus ``value``, ``dist_version``,
        ``description``, ``critical``, ``api_version``, ``file``, ``reason`` and ``unknown``.
    """
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement
    from packaging.specifiers import InvalidSpecifier
    from packaging.specifiers import SpecifierSet

    from apt.plugins import PLUGIN_API_VERSION
    from apt.plugins._static import read_static_metadata

    eps = _entry_points()
    names = [ep.name for ep in eps]
    rows: list[dict[str, Any]] = []
    for ep in eps:
        info = read_static_metadata(ep.value)
        meta = info.metadata
        row: dict[str, Any] = {
            "name": ep.name,
            # the class's own version when readable, else the distribution's
            "version": meta["version"] if "version" not in info.unknown and info.error is None else ep.version,
            "distribution": ep.distribution,
            "dist_version": ep.version,
            "value": ep.value,
            "status": "available",
            "reason": None,
            "description": meta["description"],
            "priority": meta["priority"],
            "critical": meta["critical"],
            "requires": list(meta["requires"]),
            "conflicts": list(meta["conflicts"]),
            "providers": list(meta["providers"]),
            "hooks": list(info.hooks),
            "api_version": meta["api_version"],
            "file": str(info.file) if info.file else None,
            "unknown": list(info.unknown),
            "note": None,
        }
        problem = None
        if info.error is not None and info.missing:
            problem = f"{info.error}; reinstall its distribution"
        elif info.error is not None:
            # not readable statically (a class made at runtime, say): that is no failure
            row["note"] = f"metadata not readable without importing ({info.error}); see --check"
        elif names.count(ep.name) > 1:
            others = ", ".join(f"{e.distribution} {e.version}" for e in eps if e.name == ep.name)
            problem = f"plugin name {ep.name!r} is provided by several distributions ({others}); uninstall all but one"
        elif info.suspicious:
            problem = (
                f"method {info.suspicious[0]} looks like a hook but matches none (see `apt plugins info {ep.name}`)"
            )
        elif "name" not in info.unknown and meta["name"] not in (None, ep.name):
            problem = f"its class calls itself {meta['name']!r} but the entry point is named {ep.name!r}"
        elif "api_version" not in info.unknown:
            try:
                if not SpecifierSet(meta["api_version"]).contains(PLUGIN_API_VERSION, prereleases=True):
                    problem = f"supports plugin API {meta['api_version']}, apt-core provides {PLUGIN_API_VERSION}"
            except InvalidSpecifier:
                problem = f"api_version {meta['api_version']!r} is not a version specifier"
        if problem is not None:
            row["status"], row["reason"] = f"failed: {problem}", problem
        else:
            reason = _disabled_reason(ep.name, config)
            if reason is not None:
                row["status"], row["reason"] = "disabled", reason
        rows.append(row)

    # A requirement that will not be there fails its dependents, transitively.
    by_name = {r["name"]: r for r in rows}
    changed = True
    while changed:
        changed = False
        for row in rows:
            if row["status"] != "available":
                continue
            for spec in row["requires"]:
                try:
                    req = Requirement(spec)
                except InvalidRequirement:
                    problem = f"{spec!r} in requires is not a plugin name with an optional version specifier"
                else:
                    dep = by_name.get(req.name)
                    if dep is None:
                        problem = f"requires {spec!r}, which is not installed"
                    elif dep["status"] != "available":
                        problem = f"requires {req.name!r}, which is {dep['status'].split(':')[0]}"
                    elif req.specifier and "version" not in dep["unknown"]:
                        ok = req.specifier.contains(str(dep["version"]), prereleases=True)
                        problem = None if ok else f"requires {spec!r} but {req.name} {dep['version']} is installed"
                    else:
                        problem = None
                if problem is not None:
                    row["status"], row["reason"] = f"failed: {problem}", problem
                    changed = True
                    break
    return rows


def _disabled_reason(name: str, config: APTConfig) -> str | None:
    from apt.plugins import AUTOLOAD_ENV

    if name in config.disable_plugins:
        return "listed in disable_plugins"
    if config.plugins is not None:
        return None if name in config.plugins else "not named in the config's plugins: list"
    if _autoload_disabled():
        return f"{AUTOLOAD_ENV} is set and the config does not name it"
    return None


@contextmanager
def _autoload_env_removed() -> Iterator[None]:
    """Check every installed plugin even when the environment turns autoloading off."""
    from apt.plugins import AUTOLOAD_ENV

    saved = os.environ.pop(AUTOLOAD_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[AUTOLOAD_ENV] = saved


def load_all(config: APTConfig, *, every_installed: bool) -> tuple[PluginManager, dict[str, dict[str, Any]]]:
    """Load and set up plugins through a fresh :class:`~apt.plugins.PluginManager`.

    :param config: plugin sections and selection.
    :param every_installed: ignore ``plugins`` / ``disable_plugins`` / the autoload switch
        and try every installed plugin (``doctor``); otherwise load what a run would.
    :returns: the manager (set up) and ``{name: failure dict}`` for every plugin that did
        not load: stage (import / validate / config / conflict / requires / setup), error,
        distribution, version and requirement chain.
    """
    from apt.errors import ConfigError
    from apt.errors import PluginConflictError
    from apt.errors import PluginError
    from apt.plugins import PluginManager

    failures: dict[str, dict[str, Any]] = {}
    data = config.to_dict()
    if every_installed:
        data["plugins"], data["disable_plugins"] = None, []
    excluded: list[str] = list(data.get("disable_plugins") or [])
    with _autoload_env_removed() if every_installed else nullcontext(), _quiet_kernel_log():
        # Errors that stop a whole load (a bad config section, a conflict) belong to one
        # plugin: record it, leave it out, and try again with the others.
        for _ in range(64):
            pm = PluginManager()
            try:
                pm.load_from_config(type(config).from_dict({**data, "disable_plugins": excluded}))
                pm.setup_all()
                break
            except (ConfigError, PluginConflictError, PluginError) as exc:
                culprit = _culprit(exc, excluded)
                if culprit is None or culprit in excluded or culprit not in pm.available():
                    raise
                stage = (
                    "config"
                    if isinstance(exc, ConfigError)
                    else "conflict"
                    if isinstance(exc, PluginConflictError)
                    else "load"
                )
                failures[culprit] = _failure_dict(pm, culprit, stage, exc)
                excluded.append(culprit)
        for name, failure in pm.failures.items():
            failures.setdefault(name, failure.as_dict())
    return pm, failures


@contextmanager
def _quiet_kernel_log() -> Iterator[None]:
    """The kernel logs each failed plugin as a warning; these commands report them themselves."""
    logger = logging.getLogger("apt.plugins")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _culprit(exc: BaseException, excluded: list[str]) -> str | None:
    plugin = getattr(exc, "plugin", None)
    if plugin:
        return str(plugin)
    key = getattr(exc, "key", None)  # ConfigError: "moe.top_k" belongs to plugin moe
    if key:
        return str(key).split(".")[0]
    return None


def _failure_dict(pm: PluginManager, name: str, stage: str, exc: BaseException) -> dict[str, Any]:
    ep = pm.entry_point(name)
    return {
        "name": name,
        "stage": stage,
        "distribution": ep.distribution if ep else None,
        "version": ep.version if ep else None,
        "error": " ".join(str(exc).split()),
        "chain": [],
    }


def apply_check(rows: list[dict[str, Any]], config: APTConfig) -> PluginManager:
    """Replace the metadata-only status by what loading through the kernel shows.

    A loaded plugin's row gets every metadata field from the loaded plugin (what the
    kernel itself uses: ``get_name()``, ``get_version()``, ``is_critical()``, the class
    attributes, the registered handlers), so nothing read from source stays behind and
    ``unknown`` is empty. A plugin that did not load keeps what the source showed.
    """
    pm, failures = load_all(config, every_installed=False)
    loaded = set(pm.list_loaded())
    for row in rows:
        name = row["name"]
        if name in loaded:
            row["status"], row["reason"] = "loaded", None
            cls = type(pm.get_plugin(name))
            described = pm.describe(name)  # get_metadata() plus the registered hooks
            row.update(
                name=described["name"],
                version=described["version"],
                description=described["description"],
                priority=described["priority"],
                critical=described["critical"],
                requires=list(described["requires"]),
                conflicts=list(described["conflicts"]),
                providers=list(described["providers"]),
                hooks=list(described["hooks"]),
                api_version=cls.api_version,
                file=_source_file(cls) or row["file"],
                unknown=[],
                note=None,
            )
        elif name in failures:
            reason = failures[name]["error"]
            row["status"], row["reason"] = f"failed: {reason}", reason
        elif row["status"] == "available":
            row["status"], row["reason"] = "disabled", "not selected by the kernel"
    return pm


def _source_file(cls: type) -> str | None:
    """The file a loaded class was defined in (None for one made where no file exists)."""
    import inspect

    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


def order_report(pm: PluginManager, event: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """For each event with handlers: the handlers in dispatch order, each with the reason for its place.

    The order is the kernel's (``HookManager._sort_key``): higher priority first; among
    equal priorities, the owning plugins' resolved position (requirements first, then
    higher effective plugin priority, then plugin name); then registration order. A
    requirement inherits the priority of what requires it, so it can never run later.
    Each reason names what actually decided a place: a tie is "by name" only when the
    names did.
    """
    from packaging.requirements import Requirement

    from apt.plugins import HOOK_NAMES
    from apt.plugins._ordering import resolve_order
    from apt.plugins.hooks import resolve_event

    plugins = {p.get_name(): p for p in pm.loaded()}
    position = {name: i for i, name in enumerate(plugins)}
    requires = {n: [r for r in (Requirement(s).name for s in p.requires) if r in plugins] for n, p in plugins.items()}
    required_by: dict[str, list[str]] = {n: [m for m in plugins if n in requires[m]] for n in plugins}
    # the kernel's own computation, so that the explanation cannot drift from the order
    _, effective = resolve_order(requires, {n: p.priority for n, p in plugins.items()})

    def eff(n: str) -> int:
        return effective[n]

    def plugin_priority(n: str) -> str:
        own = plugins[n].priority
        if eff(n) == own:
            return str(own)
        lifted = [m for m in required_by[n] if eff(m) == eff(n)]
        return f"{eff(n)} (raised from {own} because {', '.join(lifted)} requires it)"

    def tie(before: str | None, plugin: str | None) -> str | None:
        """Why ``plugin``'s handler comes after ``before``'s, which has the same priority."""
        if plugin is None:
            if before is None:
                return "same priority as the previous handler: in registration order"
            return f"same priority as {before}: functions registered without a plugin run after plugins"
        if before == plugin:
            return "same plugin: in registration order"
        if before is None or before not in position or plugin not in position:
            return f"same priority as {before or 'the previous handler'}: by name"
        if before in requires[plugin]:
            return None  # "after X (requires)" already says it
        # resolve_order places, at each step, the ready plugin (all requirements placed) of
        # highest effective priority, then first by name. `plugin` comes later because it
        # was not ready yet when `before` was placed, or lost to it on priority, or on name.
        waiting = [d for d in requires[plugin] if position[d] > position[before]]
        if waiting:
            last = max(waiting, key=position.__getitem__)
            return f"same priority as {before}: later in the plugin order (its requirement {last} comes after {before})"
        if eff(before) > eff(plugin):
            return (
                f"same priority as {before}: later in the plugin order "
                f"(plugin priority {plugin_priority(plugin)} < {before}'s {plugin_priority(before)})"
            )
        return f"same priority as {before}: by name"

    events = [resolve_event(event)] if event else list(HOOK_NAMES)
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        handlers = pm.hook_manager.ordered(ev)
        if not handlers:
            continue
        rows: list[dict[str, Any]] = []
        previous: tuple[int, str | None] | None = None
        for h in handlers:
            plugin = h.plugin
            if h.priority is not None:
                prio, why = h.priority, [f"priority {h.priority} (given at registration)"]
            elif plugin in plugins:
                prio = eff(plugin)
                own = plugins[plugin].priority
                why = [f"priority {own}"]
                if prio != own:
                    lifted = [m for m in required_by[plugin] if eff(m) == prio]
                    why = [f"priority {prio} (own {own}, raised because {', '.join(lifted)} requires it)"]
                before = [d for d in requires[plugin] if d in plugins]
                if before:
                    why.append(f"after {', '.join(before)} (requires)")
            else:
                prio, why = 0, ["priority 0 (a function registered without a plugin)"]
            if previous is not None and previous[0] == prio:
                reason = tie(previous[1], plugin)
                if reason is not None:
                    why.append(reason)
            rows.append(
                {
                    "handler": h.name,
                    "plugin": plugin,
                    "priority": prio,
                    "position": position.get(plugin) if plugin else None,
                    "enabled": h.enabled,
                    "reason": "; ".join(why),
                }
            )
            previous = (prio, plugin)
        out[ev] = rows
    return out
