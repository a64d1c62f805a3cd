"""The :class:`Plugin` base class.

A plugin is a class. The manager instantiates it with its validated configuration,
calls :meth:`Plugin.setup`, and registers every lifecycle method the subclass defines
(``on_step_end`` ...) as a handler of the event of the same name. Metadata is plain
class attributes so that tools can read it without running plugin code::

    class MyPlugin(Plugin):
        name = "my_plugin"
        version = "1.0.0"
        requires = ("moe>=1.0",)
        priority = 10

        def on_step_end(self, step, loss, **kwargs):
            ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from pydantic import BaseModel

from apt.plugins.hookspecs import HOOK_NAMES


if TYPE_CHECKING:
    from apt.core.registry import ProviderRegistry
    from apt.plugins.hooks import HookManager


__all__ = ["PLUGIN_API_VERSION", "Plugin"]

#: The version of the plugin API that this apt-core implements. Plugins declare the
#: range they support in :attr:`Plugin.api_version`.
PLUGIN_API_VERSION = "1.0"

# events whose handlers change the loss, the model or its gradients: their plugins are critical by default
_CHANGES_THE_RUN = ("on_compute_loss", "on_model_built", "on_backward", "on_after_backward")


class Plugin:
    """Base class of every APT plugin.

    Class attributes (all optional except a name, given as ``name`` or by overriding
    :meth:`get_name`):

    ``name``, ``version``, ``description``
        identity; the entry-point name must equal ``name``.
    ``requires``
        other plugins that must load first, with optional version specifiers
        (``"moe>=1.0"``); they run before this plugin on every event.
    ``conflicts``
        plugins that cannot load together with this one.
    ``priority``
        higher runs earlier among plugins not ordered by ``requires`` (default 0).
    ``critical``
        if a handler raises, stop the run (``True``) or disable this plugin and go on
        (``False``). ``None`` (default) means critical when the plugin adds loss terms
        or changes the model or its gradients (defines ``on_compute_loss``, ``on_model_built``,
        ``on_backward`` or ``on_after_backward``).
    ``providers``
        ``"kind:name"`` strings of the providers :meth:`setup` registers (informative,
        shown by ``apt plugins list``).
    ``config_model``
        a pydantic model for the plugin's config section; the manager validates the
        section with it and passes the model instance to ``__init__``. Without one the
        plugin gets the plain ``dict``.
    ``state_version``
        version of what ``on_save_checkpoint`` returns; see :meth:`migrate_state`.
    ``api_version``
        the plugin-API versions this plugin supports, as a specifier (``">=1,<2"``).
    """

    name: ClassVar[str | None] = None
    version: ClassVar[str] = "0.0.0"
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...] | list[str]] = ()
    conflicts: ClassVar[tuple[str, ...] | list[str]] = ()
    priority: ClassVar[int] = 0
    critical: ClassVar[bool | None] = None
    providers: ClassVar[tuple[str, ...] | list[str]] = ()
    config_model: ClassVar[type[BaseModel] | None] = None
    state_version: ClassVar[int] = 1
    api_version: ClassVar[str] = ">=1,<2"
    _apt_name: str | None = None  # set by the manager for a class without a name
    _failure: str | None = None  # why a hook error disabled it (class default: __init__ may skip super)

    def __init__(self, config: Any = None) -> None:
        self.config: Any = {} if config is None else config
        self._enabled = True
        self._setup = False
        self.registry: ProviderRegistry | None = None
        self.hook_manager: HookManager | None = None

    # --- identity ---------------------------------------------------------------------

    def get_name(self) -> str:
        """The plugin's unique name (its config section and entry-point name)."""
        name = getattr(self, "_apt_name", None) or type(self).name
        if not name:
            raise NotImplementedError(
                f"plugin class {type(self).__qualname__} has no name: set the class attribute "
                "`name = '...'` or override get_name()"
            )
        return name

    def get_version(self) -> str:
        """The plugin's version (PEP 440)."""
        return type(self).version

    def get_metadata(self) -> dict[str, Any]:
        """Name, version, description and the ordering metadata, as a plain dict."""
        return {
            "name": self.get_name(),
            "version": self.get_version(),
            "description": self.description,
            "requires": list(self.requires),
            "conflicts": list(self.conflicts),
            "priority": self.priority,
            "critical": self.is_critical(),
            "providers": list(self.providers),
        }

    def is_critical(self) -> bool:
        """Whether an error in one of this plugin's handlers stops the run.

        Unless ``critical`` says otherwise: a plugin that handles ``on_compute_loss``,
        ``on_model_built``, ``on_backward`` or ``on_after_backward`` (by a method of that
        name or an ``@hook`` one), since the run would silently change without it.
        """
        if self.critical is not None:
            return self.critical
        from apt.plugins.manager import handled_events  # the manager module imports this one

        return not handled_events(type(self)).isdisjoint(_CHANGES_THE_RUN)

    # --- lifecycle --------------------------------------------------------------------

    def setup(self, registry: ProviderRegistry, hook_manager: HookManager) -> None:
        """Register providers and extra hooks. Lifecycle methods need no registration.

        Overrides need not call ``super().setup``; the manager records the registry and
        hook manager itself.
        """
        self.registry = registry
        self.hook_manager = hook_manager

    def teardown(self) -> None:
        """Release resources. Called in reverse setup order, even if another teardown failed."""

    def enable(self) -> None:
        """Let this plugin's handlers run (the default). Also re-arms a plugin disabled by an error."""
        self._enabled = True
        self._failure = None
        if self.hook_manager is not None:
            self.hook_manager._owner_enabled_changed(self)

    def disable(self) -> None:
        """Skip this plugin's handlers until :meth:`enable`. Costs nothing per event."""
        self._enabled = False
        if self.hook_manager is not None:
            self.hook_manager._owner_enabled_changed(self)

    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def failure(self) -> str | None:
        """Why a hook error disabled this plugin (the error message), or None.

        A plugin disabled by an error stays disabled for the rest of the run, across resumes:
        its schedule no longer enables it. Only an explicit :meth:`enable` re-arms it.
        """
        return self._failure

    def _disable_for_error(self, message: str) -> None:
        self._failure = message
        self.disable()

    def is_setup(self) -> bool:
        return self._setup

    def on_enable(self, trainer: Any = None, epoch: int | None = None, step: int | None = None) -> None:
        """Called when a schedule enables this plugin during a run (e.g. MoE upcycling)."""

    def on_disable(self, trainer: Any = None, epoch: int | None = None, step: int | None = None) -> None:
        """Called when a schedule disables this plugin during a run."""

    def migrate_state(self, state: Any, from_version: int) -> Any:
        """Convert checkpointed state written with an older ``state_version``.

        The default refuses, so that old state is never misread silently.
        """
        from apt.errors import CheckpointError

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
