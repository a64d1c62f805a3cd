"""What ``apt plugins`` reports: metadata rows, load results and order explanations.

``metadata_rows`` reads installed distributions' metadata only (no plugin code, no
torch). ``load_all``, ``apply_check`` and ``order_report`` load plugins through the
kernel's :class:`~apt.plugins.PluginManager` exactly as a run would. No rule of the
kernel is repeated here: selection asks :func:`~apt.plugins.unselected_reason`, a name
claimed by two distributions is what :meth:`PluginManager.discover` reports, and every
import, validation, requirement and setup result is the manager's own. The commands in
:mod:`apt.cli._plugins` print what these return.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from typing import Any

from apt.errors import ConfigError
from apt.errors import PluginConflictError
from apt.errors import PluginError


if TYPE_CHECKING:
    from apt.core import APTConfig
    from apt.plugins import PluginManager


__all__ = ["apply_check", "describe_loaded", "load_all", "metadata_rows", "order_report"]


def metadata_rows(config: APTConfig) -> list[dict[str, Any]]:
    """One row per installed ``apt.plugins`` entry point, from distribution metadata only.

    :param config: decides ``disabled`` (``plugins`` / ``disable_plugins``, and the
        ``APT_DISABLE_PLUGIN_AUTOLOAD`` switch), as the kernel decides it for a run.
    :returns: dicts with ``name``, ``distribution``, ``version`` (the distribution's),
        ``summary``, ``target`` (the entry point's ``module:Class``), ``status``
        (``available`` / ``disabled`` / ``failed``), ``reason`` (why not available), and
        ``plugin`` / ``failure`` (None here; filled by :func:`apply_check`).
    """
    from apt.plugins import PluginManager
    from apt.plugins import discover_entry_points
    from apt.plugins import unselected_reason

    # the kernel's discovery: a name claimed by several distributions fails there
    discovery = PluginManager()
    discovery.discover()
    rows: list[dict[str, Any]] = []
    for ep in discover_entry_points(discovery.entry_point_group):
        failure = discovery.failures.get(ep.name)
        reason = failure.message if failure is not None else unselected_reason(ep.name, config)
        status = "available" if reason is None else "failed" if failure is not None else "disabled"
        rows.append(
            {
                "name": ep.name,
                "distribution": ep.distribution,
                "version": ep.version,
                "summary": ep.summary,
                "target": ep.value,
                "status": status,
                "reason": reason,
                "plugin": None,
                "failure": None,
            }
        )
    return rows


def load_all(config: APTConfig, *, every_installed: bool) -> tuple[PluginManager, dict[str, dict[str, Any]]]:
    """Load and set up plugins through a fresh :class:`~apt.plugins.PluginManager`.

    :param config: plugin sections and selection.
    :param every_installed: try every installed plugin, as if the config named them all
        (``doctor``, ``info``); otherwise load what a run with ``config`` would.
    :returns: the manager (set up) and ``{name: failure dict}`` for every plugin that did
        not load: stage (import / validate / config / conflict / requires / setup), error,
        distribution, version and requirement chain, as the manager recorded them.
    """
    from apt.plugins import PluginManager

    failures: dict[str, dict[str, Any]] = {}
    data = config.to_dict()
    excluded: list[str] = []
    with _quiet_kernel_log():
        # The manager records a plugin that fails to import, validate, find its requirements
        # or set up, and goes on with the others. A bad config section or a conflict stops
        # the whole load instead: it belongs to one plugin, so record that plugin, leave it
        # out, and load again.
        while True:
            pm = PluginManager()
            if every_installed:
                # naming every plugin selects each one whatever the autoload switch says
                data["plugins"] = [n for n in pm.available() if n not in excluded]
                data["disable_plugins"] = []
            else:
                data["disable_plugins"] = [*config.disable_plugins, *excluded]
            try:
                _load_and_set_up(pm, type(config).from_dict(data))
            except (ConfigError, PluginError) as exc:
                culprit = _culprit(exc)
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
                continue
            break
        for name, failure in pm.failures.items():
            failures.setdefault(name, failure.as_dict())
    return pm, failures


def _load_and_set_up(pm: PluginManager, config: APTConfig) -> None:
    """Load and set up plugins as a run does, without raising a failure the manager recorded.

    The manager tries every selected plugin and records each failure; for a plugin the
    config names explicitly it raises afterwards (a run stops there), which these commands
    do not: they report it.
    """
    for step in (lambda: pm.load_from_config(config), pm.setup_all):
        try:
            step()
        except PluginError as exc:
            if not _recorded(pm, exc):
                raise


def _recorded(pm: PluginManager, exc: PluginError) -> bool:
    """Whether ``exc`` reports failures the manager recorded after trying every plugin.

    That is a plugin error naming a recorded plugin, or (several at once) naming none.
    """
    return exc.plugin in pm.failures if exc.plugin else bool(pm.failures)


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


def _culprit(exc: BaseException) -> str | None:
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


def describe_loaded(pm: PluginManager, name: str) -> dict[str, Any]:
    """What the kernel knows of a loaded plugin: its metadata, hooks, API version and source file."""
    import inspect

    plugin = pm.get_plugin(name)
    try:
        file: str | None = inspect.getsourcefile(type(plugin))
    except (TypeError, OSError):  # a class made where no file exists
        file = None
    return {**pm.describe(name), "api_version": plugin.api_version, "file": file}


def apply_check(rows: list[dict[str, Any]], config: APTConfig, *, every_installed: bool = False) -> PluginManager:
    """Replace the metadata-only status by what loading through the kernel shows.

    A loaded plugin's row becomes ``loaded`` and gets ``plugin``: what
    :func:`describe_loaded` says. One that did not load becomes ``failed`` with the
    manager's failure (stage, cause, requirement chain) in ``failure``. One the kernel
    did not select keeps its metadata status.
    """
    pm, failures = load_all(config, every_installed=every_installed)
    loaded = set(pm.list_loaded())
    for row in rows:
        name = row["name"]
        if name in loaded:
            row["status"], row["reason"] = "loaded", None
            row["plugin"] = describe_loaded(pm, name)
        elif name in failures:
            row["status"], row["reason"] = "failed", failures[name]["error"]
            row["failure"] = failures[name]
        elif row["status"] == "available":
            row["status"], row["reason"] = "disabled", "not selected by the kernel"
    return pm


def order_report(pm: PluginManager, event: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """For each event with handlers: the handlers in dispatch order, each with the reason for its place.

    The order is the kernel's (``hook_manager.ordered(event)``): higher priority first; among
    equal priorities, the owning plugins' resolved position (what must run first by the
    kernel's rule, ``order_edges``: ``requires``, ``after``, another's ``before``; then higher
    effective plugin priority, then plugin name); then registration order. What must run
    first inherits the priority of what runs after it, so it can never run later.
    Each reason names what actually decided a place: a tie is "by name" only when the
    names did.
    """
    from packaging.requirements import Requirement

    from apt.plugins import HOOK_NAMES
    from apt.plugins._loading import order_edges
    from apt.plugins._loading import resolve_order
    from apt.plugins.hooks import resolve_event

    plugins = {p.get_name(): p for p in pm.loaded()}
    position = {name: i for i, name in enumerate(plugins)}
    # the kernel's own rule and computation, so that the explanation cannot drift from the order
    first = order_edges(plugins)  # {plugin: the loaded plugins that must run before it}
    runs_after: dict[str, list[str]] = {n: [m for m in plugins if n in first[m]] for n in plugins}
    _, effective = resolve_order(plugins)

    def eff(n: str) -> int:
        return effective[n]

    def rule(dep: str, plugin: str) -> str:
        """Which declaration puts ``dep`` before ``plugin``."""
        if dep in {Requirement(s).name for s in plugins[plugin].requires}:
            return "requires"
        if dep in {Requirement(s).name for s in plugins[plugin].after}:
            return "after"
        return f"{dep}'s before"

    def lifted_by(n: str, prio: int) -> str:
        lifted = [m for m in runs_after[n] if eff(m) == prio]
        return ", ".join(f"{m} requires it" if rule(n, m) == "requires" else f"{m} runs after it" for m in lifted)

    def plugin_priority(n: str) -> str:
        own = plugins[n].priority
        if eff(n) == own:
            return str(own)
        return f"{eff(n)} (raised from {own} because {lifted_by(n, eff(n))})"

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
        if before in first[plugin]:
            return None  # "after X (requires)" already says it
        # resolve_order places, at each step, the ready plugin (all its `first` placed) of
        # highest effective priority, then first by name. `plugin` comes later because it
        # was not ready yet when `before` was placed, or lost to it on priority, or on name.
        waiting = [d for d in first[plugin] if position[d] > position[before]]
        if waiting:
            last = max(waiting, key=position.__getitem__)
            if rule(last, plugin) == "requires":
                return f"same priority as {before}: later in the plugin order (its requirement {last} comes after {before})"
            return f"same priority as {before}: later in the plugin order (it runs after {last}, which comes after {before})"
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
                    why = [f"priority {prio} (own {own}, raised because {lifted_by(plugin, prio)})"]
                if first[plugin]:
                    why.append("after " + ", ".join(f"{d} ({rule(d, plugin)})" for d in first[plugin]))
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
