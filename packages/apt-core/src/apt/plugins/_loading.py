"""The loading rules :class:`~apt.plugins.PluginManager` applies: selection, the plugin contract,
instantiation, requirements, conflicts and order. Discovery is in :mod:`apt.plugins._discovery`.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Collection
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from graphlib import CycleError
from graphlib import TopologicalSorter
from typing import Any

from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion
from packaging.version import Version

from apt.core.config import APTConfig
from apt.core.config import did_you_mean
from apt.errors import PluginConflictError
from apt.errors import PluginDependencyError
from apt.errors import PluginLoadError
from apt.errors import PluginValidationError
from apt.plugins._discovery import PluginEntryPoint
from apt.plugins.base import PLUGIN_API_VERSION
from apt.plugins.base import Plugin
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES


__all__ = [
    "AUTOLOAD_ENV",
    "Candidate",
    "PluginFailure",
    "autoload_disabled",
    "check_conflicts",
    "instantiate",
    "order_edges",
    "requirement_problem",
    "resolve_order",
    "select",
    "unselected_reason",
]

log = logging.getLogger("apt.plugins")

AUTOLOAD_ENV = "APT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass
class Candidate:
    """A plugin that could load: a class (registered in code, or found in a directory) or an entry point."""

    name: str
    source: str  # "registered" | "directory" | "entry-point"
    cls: type[Plugin] | None = None
    entry_point: PluginEntryPoint | None = None

    @property
    def distribution(self) -> str | None:
        return self.entry_point.distribution if self.entry_point else None

    @property
    def version(self) -> str | None:
        return self.entry_point.version if self.entry_point else None

    @property
    def who(self) -> str:
        return self.entry_point.who if self.entry_point else f"plugin {self.name!r}"

    def load(self) -> type[Plugin]:
        """The plugin class; an entry point's code is imported the first time."""
        if self.cls is None:
            assert self.entry_point is not None  # a candidate has a class or an entry point
            self.cls = self.entry_point.load()
        return self.cls


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
        fields = ("name", "stage", "distribution", "version", "chain")
        return {**{k: getattr(self, k) for k in fields}, "error": self.message}


# Selection: the one place the config and the autoload switch pick plugins (load_from_config
# and `apt plugins list` both ask these, so the two never disagree).


def autoload_disabled() -> bool:
    """Whether ``APT_DISABLE_PLUGIN_AUTOLOAD`` is set to ``1``, ``true``, ``yes`` or ``on``."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def unselected_reason(name: str, config: APTConfig) -> str | None:
    """Why a run with ``config`` would not load the installed plugin ``name``; None if it would.
    Reads the config and the environment only: no plugin code is imported."""
    if name in config.disable_plugins:
        return "listed in disable_plugins"
    if config.plugins is not None:
        return None if name in config.plugins else "not named in the config's plugins: list"
    if autoload_disabled():
        return f"{AUTOLOAD_ENV} is set and the config does not name it"
    return None


def select(config: APTConfig, known: Collection[str], failed: Collection[str]) -> list[str]:
    """The plugins ``config`` selects, in the order to try them: ``plugins:`` if given, else
    every installed one that did not fail discovery; then :func:`unselected_reason` filters."""
    if config.plugins is not None:
        candidates = list(dict.fromkeys(config.plugins))
    else:
        if autoload_disabled():
            log.info("%s is set: loading no plugins unless the config names them", AUTOLOAD_ENV)
        candidates = sorted(n for n in known if n not in failed)
    return [n for n in candidates if unselected_reason(n, config) is None]


def instantiate(cand: Candidate, section: Any) -> Plugin:
    """The plugin ``cand`` names, made with its config section once its class passed the plugin contract.

    :raises PluginValidationError: the class breaks the contract (API version, version, hook names,
        requires/conflicts/after/before specifiers, its own name).
    :raises ConfigError: the section does not validate (the key is named).
    :raises PluginLoadError: the import or the constructor failed.
    """
    name, cls, who = cand.name, cand.load(), cand.who
    try:
        supported = SpecifierSet(cls.api_version).contains(PLUGIN_API_VERSION, prereleases=True)
    except InvalidSpecifier:
        raise PluginValidationError(
            f"{who}: api_version {cls.api_version!r} is not a version specifier (write e.g. '>=1,<2')", plugin=name
        ) from None
    if not supported:
        raise PluginValidationError(
            f"{who} supports plugin API {cls.api_version} but apt-core provides plugin API {PLUGIN_API_VERSION}; "
            "install a version of the plugin made for this apt-core, or an apt-core that matches the plugin",
            plugin=name,
        )
    try:
        Version(cls.version)
    except InvalidVersion:
        raise PluginValidationError(f"{who}: version {cls.version!r} is not a PEP 440 version", plugin=name) from None
    events = [*HOOK_NAMES, *ALIASES]
    callbacks = {*events, "on_enable", "on_disable"}  # the last two are plugin-level callbacks, not hooks
    for attr in sorted(dir(cls)):
        if attr.startswith("on_") and attr not in callbacks and callable(getattr(cls, attr)):
            raise PluginValidationError(
                f"{who}: method {cls.__qualname__}.{attr} looks like a hook but matches none"
                f"{did_you_mean(attr, events)}; rename it, or give helper methods a name that does not start "
                "with 'on_'",
                plugin=name,
            )
    for req in [*cls.requires, *cls.conflicts, *cls.after, *cls.before]:
        try:
            Requirement(req)
        except InvalidRequirement:
            raise PluginValidationError(
                f"{who}: {req!r} in requires/conflicts/after/before is not a plugin name with an optional "
                "version specifier (write e.g. 'moe>=1.0')",
                plugin=name,
            ) from None
    config = cls.validate_config(section, name)
    try:
        plugin = cls(config)
    except Exception as exc:
        raise PluginLoadError(
            f"{who}: creating {cls.__qualname__}(config) failed: {type(exc).__name__}: {exc}", plugin=name
        ) from exc
    if "config" not in vars(plugin):  # a subclass __init__ that skipped super().__init__
        Plugin.__init__(plugin, config)
    try:
        own = plugin.get_name()
    except NotImplementedError:
        plugin.adopt_name(name)  # a nameless class takes its registration name
        own = name
    if own != name:
        raise PluginValidationError(
            f"{who}: its class {cls.__qualname__} calls itself {own!r}; the entry-point "
            "or registration name must equal the plugin's name",
            plugin=name,
        )
    return plugin


def requirement_problem(
    plugin: Plugin, plugins: Mapping[str, Plugin], failures: Mapping[str, PluginFailure], known: Mapping[str, Candidate]
) -> tuple[str, list[str]] | None:
    """``(message, chain)`` for the first requirement of the loaded ``plugin`` that is not met, or None.
    ``known`` holds every plugin that could load."""
    name = plugin.get_name()
    for spec in plugin.requires:
        req = Requirement(spec)
        dep, who = req.name, f"plugin {name!r} requires"
        if dep in failures:
            chain = [name, *(failures[dep].chain or [dep])]
            return f"{who} {dep!r}, which failed: {' -> '.join(chain)}: {failures[dep].message}", chain
        if dep not in plugins and dep in known:
            problem = (
                f"{who} {dep!r}, which is installed but not selected; add {dep!r} to plugins: [...] "
                "(or remove it from disable_plugins)"
            )
        elif dep not in plugins:
            problem = (
                f"{who} {spec!r}, which is not installed; install it (pip install apt-plugin-{dep}) "
                f"or turn {name!r} off"
            )
        elif req.specifier and not req.specifier.contains(version := plugins[dep].get_version(), prereleases=True):
            problem = (
                f"{who} {spec!r} but {dep} {version} is loaded; install a matching version "
                f"(pip install '{known[dep].distribution or f'apt-plugin-{dep}'}{req.specifier}')"
            )
        else:
            continue
        return problem, [name, dep]
    return None


def check_conflicts(plugins: Mapping[str, Plugin]) -> None:
    """Raise PluginConflictError for the first loaded pair that declares a conflict."""
    for name, plugin in plugins.items():
        for spec in plugin.conflicts:
            other = Requirement(spec)
            if other.name == name or other.name not in plugins:
                continue
            if not other.specifier or other.specifier.contains(plugins[other.name].get_version(), prereleases=True):
                raise PluginConflictError(
                    f"plugins {name!r} and {other.name!r} conflict ({name!r} declares conflicts: {spec!r}); "
                    f"turn one off, e.g. disable_plugins: [{other.name}]",
                    plugin=name,
                    other=other.name,
                )


# Order: what must run first (requires, after, another's before), then priority (higher first), then name.


def order_edges(plugins: Mapping[str, Plugin]) -> dict[str, list[str]]:
    """``{plugin: the loaded plugins that run before it}``: its ``requires`` and ``after``, and
    those that name it in ``before``. A plugin named in ``after``/``before`` that is not loaded is ignored."""
    edges: dict[str, list[str]] = {n: [] for n in plugins}
    for name, plugin in plugins.items():
        for dep in (Requirement(s).name for s in [*plugin.requires, *plugin.after]):
            if dep in plugins and dep not in edges[name]:
                edges[name].append(dep)
        for later in (Requirement(s).name for s in plugin.before):
            if later in plugins and name not in edges[later]:
                edges[later].append(name)
    return edges


def resolve_order(plugins: Mapping[str, Plugin]) -> tuple[list[str], dict[str, int]]:
    """The run order of the loaded plugins and each one's *effective* priority.

    What must run first (:func:`order_edges`) must never run after what waits for it, so its
    effective priority is lifted to the highest effective priority of the plugins that wait for
    it; among the plugins whose predecessors are placed, the highest effective priority goes
    next, then the first name.

    :raises PluginDependencyError: on a requirement cycle (the message prints it).
    """
    requires, priority = order_edges(plugins), {n: p.priority for n, p in plugins.items()}
    dependents: dict[str, list[str]] = {n: [] for n in requires}
    for n, ds in requires.items():
        for d in ds:
            dependents[d].append(n)
    effective: dict[str, int] = {}
    try:
        for n in TopologicalSorter(dependents).static_order():  # what requires n comes first
            effective[n] = max([priority[n], *(effective[d] for d in dependents[n])])
    except CycleError as exc:
        cycle = exc.args[1][:-1]  # each one requires the next; start at the first name
        first = cycle.index(min(cycle))
        cycle = [*cycle[first:], *cycle[:first], cycle[first]]
        raise PluginDependencyError(
            f"requirement cycle: {' -> '.join(cycle)}; remove one of these requires", plugin=cycle[0]
        ) from None
    sorter = TopologicalSorter(requires)
    sorter.prepare()
    ready = [(-effective[n], n) for n in sorter.get_ready()]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        sorter.done(n)
        for m in sorter.get_ready():
            heapq.heappush(ready, (-effective[m], m))
    return order, effective
