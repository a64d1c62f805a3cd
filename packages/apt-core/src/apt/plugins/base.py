"""The :class:`Plugin` base class: metadata as class attributes, a config validated once,
lifecycle methods named after events (see :mod:`apt.plugins.hookspecs`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from pydantic import BaseModel
from pydantic import ValidationError

from apt.core.config import config_error_from_validation
from apt.core.readonly import read_only
from apt.errors import CheckpointError
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import CRITICAL_EVENTS
from apt.plugins.hookspecs import HOOK_MARK
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import resolve_event


if TYPE_CHECKING:
    from apt.core.registry import ProviderRegistry
    from apt.plugins.hooks import HookManager
    from apt.plugins.view import TrainerView


__all__ = ["PLUGIN_API_VERSION", "Plugin", "handled_events", "handler_specs"]

#: The version of the plugin API that this apt-core implements. Plugins declare the
#: range they support in :attr:`Plugin.api_version`.
PLUGIN_API_VERSION = "1.0"


class Plugin:
    """Base class of every APT plugin. Metadata is class attributes, all optional but ``name``."""

    name: ClassVar[str | None] = None  #: the plugin's unique name; its entry-point name must equal it
    version: ClassVar[str] = "0.0.0"  #: the plugin's version (PEP 440)
    description: ClassVar[str] = ""  #: one line for ``apt plugins info``
    requires: ClassVar[tuple[str, ...] | list[str]] = ()  #: plugins that must load, and run, first (``"moe>=1.0"``)
    after: ClassVar[tuple[str, ...] | list[str]] = ()  #: plugins this one runs after, when they are loaded
    before: ClassVar[tuple[str, ...] | list[str]] = ()  #: plugins this one runs before, when they are loaded
    conflicts: ClassVar[tuple[str, ...] | list[str]] = ()  #: plugins that cannot load with this one
    priority: ClassVar[int] = 0  #: higher runs earlier among plugins not ordered otherwise
    #: whether a handler error stops the run (True) or disables this plugin (False); None: True for a
    #: plugin handling one of :data:`~apt.plugins.hookspecs.CRITICAL_EVENTS` (loss, gradients, model)
    critical: ClassVar[bool | None] = None
    providers: ClassVar[tuple[str, ...] | list[str]] = ()  #: the ``"kind:name"`` providers :meth:`setup` registers
    #: the pydantic model of the config section; ``self.config`` is its validated, read-only instance
    config_model: ClassVar[type[BaseModel] | None] = None
    state_version: ClassVar[int] = 1  #: version of what ``on_save_checkpoint`` returns (see :meth:`migrate_state`)
    api_version: ClassVar[str] = ">=1,<2"  #: the plugin API versions supported, as a specifier
    # instance state, with class defaults for a subclass __init__ that skips super().__init__
    _apt_name: str | None = None  # the registration name of a class without a name
    _failure: str | None = None  # why a hook error disabled it
    _enabled: bool = True
    _setup: bool = False
    registry: ProviderRegistry | None = None
    hook_manager: HookManager | None = None

    def __init__(self, config: Any = None) -> None:
        """:param config: the validated ``config_model`` instance (a mapping is validated here, once)."""
        name = type(self).name or type(self).__name__.lower()
        self.config: Any = read_only(type(self).validate_config(config, name), name, name)

    @classmethod
    def validate_config(cls, section: Any, name: str | None = None) -> Any:
        """``section`` as a ``config_model`` instance (validated unless it is one) or, without a
        model, a mapping. A ConfigError names the key's dotted path (``moe.num_experts``)."""
        model = cls.config_model
        if isinstance(section, BaseModel) and (model is None or isinstance(section, model)):
            return section
        if isinstance(section, BaseModel):
            section = section.model_dump()
        section = dict(section or {})
        if model is None:
            return section
        try:
            return model.model_validate(section)
        except ValidationError as exc:
            raise config_error_from_validation(exc, model, prefix=name or cls.name or "") from None

    def get_name(self) -> str:
        """The plugin's unique name (its config section and entry-point name)."""
        name = self._apt_name or type(self).name
        if not name:
            raise NotImplementedError(
                f"plugin class {type(self).__qualname__} has no name: set the class attribute "
                "`name = '...'` or override get_name()"
            )
        return name

    def adopt_name(self, name: str) -> None:
        """Called by the manager: a class without a name goes by its registration name."""
        self._apt_name = name

    def get_version(self) -> str:
        """The plugin's version (PEP 440)."""
        return type(self).version

    def get_metadata(self) -> dict[str, Any]:
        """Name, version, description and the ordering metadata, as a plain dict."""
        identity = {"name": self.get_name(), "version": self.get_version(), "description": self.description}
        lists = {k: list(getattr(self, k)) for k in ("requires", "after", "before", "conflicts", "providers")}
        return {**identity, **lists, "priority": self.priority, "critical": self.is_critical()}

    def is_critical(self) -> bool:
        """Whether a handler error stops the run: ``critical``, else whether the plugin handles
        one of :data:`~apt.plugins.hookspecs.CRITICAL_EVENTS` (the run would silently change without it)."""
        if self.critical is not None:
            return self.critical
        return not handled_events(type(self)).isdisjoint(CRITICAL_EVENTS)

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register providers and extra hooks (lifecycle methods need none); ``super().setup`` is optional."""
        self.registry = registry
        self.hook_manager = hook_manager

    def teardown(self) -> None:
        """Release resources. Called in reverse setup order, even if another teardown failed."""

    def mark_setup(self, done: bool) -> None:
        """Called by the manager around :meth:`setup` and :meth:`teardown`."""
        self._setup = done

    def is_setup(self) -> bool:
        return self._setup

    def enable(self) -> None:
        """Let this plugin's handlers run (the default). Also re-arms a plugin disabled by an error."""
        self._failure = None
        self._set_enabled(True)

    def disable(self) -> None:
        """Skip this plugin's handlers until :meth:`enable`. Costs nothing per event."""
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        if self.hook_manager is not None:
            self.hook_manager.plugin_toggled(self)  # its handlers join or leave the dispatch

    def disable_for_error(self, message: str) -> None:
        """Disable this plugin because a handler raised (see :attr:`failure`)."""
        self._failure = message
        self.disable()

    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def failure(self) -> str | None:
        """Why a hook error disabled this plugin, or None. It stays disabled for the rest of
        the run, across resumes and whatever its schedule says; only :meth:`enable` re-arms it."""
        return self._failure

    def on_enable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        """Called when a schedule enables this plugin during a run (e.g. MoE upcycling)."""

    def on_disable(self, trainer: TrainerView | None = None, epoch: int | None = None, step: int | None = None) -> None:
        """Called when a schedule disables this plugin during a run."""

    def migrate_state(self, state: Any, from_version: int) -> Any:
        """Convert checkpointed state of an older ``state_version``; the default refuses (never misread silently)."""
        raise CheckpointError(
            f"plugin {self.get_name()!r} cannot read its checkpoint state of state_version {from_version} "
            f"(it writes version {self.state_version}); implement {type(self).__qualname__}.migrate_state() "
            "or resume with the plugin version that wrote the checkpoint"
        )

    def __repr__(self) -> str:
        try:
            name = self.get_name()
        except NotImplementedError:
            name = "?"
        return f"{type(self).__name__}({name}, v{self.get_version()}, enabled={self._enabled})"


def _noop_hook(self: Plugin, **kwargs: Any) -> None:
    """Does nothing; override it to handle the event (registered automatically)."""


# Every lifecycle method exists on the base class as a no-op, as in the original API, so
# `super().on_step_end(**kwargs)` works; only methods a subclass overrides are registered.
for _event in HOOK_NAMES:
    setattr(Plugin, _event, _noop_hook)
del _event


def handler_specs(cls: type[Plugin]) -> Iterator[tuple[str, str, int | None, Any]]:
    """``(event, attribute, priority, condition)`` of each handler of a plugin class: a method
    named after an event (or an alias) that overrides the base class's, or one marked ``@hook``."""
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
    return {resolve_event(event) for event, _, _, _ in handler_specs(cls)}
