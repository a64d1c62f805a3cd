"""Typed errors raised by APT.

Every error names the offending object (plugin, hook, config key, file) and, where
one exists, says how to fix the problem. User mistakes derive from :class:`UsageError`;
the ``apt`` command prints those as one line and exits with status 2, while anything
else keeps its traceback because it is a bug.

::

    AptError
    ├── UsageError                      a user mistake: printed as one line, exit 2
    │   ├── ConfigError                 bad config value or unknown key (has .key)
    │   │   └── ReadOnlyConfigError     a plugin wrote to a config (has .key, .plugin)
    │   ├── PluginError                 about one plugin (has .plugin)
    │   ├── PluginNotFoundError         a plugin name that is not installed
    │   ├── PluginLoadError             import / config / setup of a plugin failed
    │   ├── PluginValidationError       a plugin class breaks the plugin contract
    │   ├── PluginDependencyError       missing or wrong-version requirement, cycle
    │   ├── PluginConflictError         two plugins that cannot run together
    │   ├── ProviderError               unknown kind, duplicate provider
    │   ├── HookError                   unknown event, bad handler registration
    │   ├── CheckpointError             unreadable, corrupt or unsafe checkpoint
    │   └── DataError                   unreadable or inconsistent training data (has .path, .line)
    ├── PluginHookError                 a plugin's hook raised during the run
    └── PluginTeardownError             plugins' teardown raised (has .errors)
    Preempted (a BaseException)         SIGTERM/SIGUSR1 ended the run at a step boundary
"""

from __future__ import annotations

from typing import Any


__all__ = [
    "AptError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HookError",
    "PluginConflictError",
    "PluginDependencyError",
    "PluginError",
    "PluginHookError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginTeardownError",
    "PluginValidationError",
    "Preempted",
    "ProviderError",
    "ReadOnlyConfigError",
    "UsageError",
]


class AptError(Exception):
    """Base class of every error APT raises on purpose."""


class UsageError(AptError):
    """A mistake in what the user asked for; the CLI prints it as one line and exits 2."""


class ConfigError(UsageError):
    """A configuration value is invalid or a key is unknown.

    :param key: the dotted path of the offending key (``"training.lr"``), if known.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ReadOnlyConfigError(ConfigError):
    """A plugin wrote to its config or to the run's config, which plugins only read.

    :param plugin: the plugin whose config it was (None for the run config: the hook
        error that carries this one names the plugin that wrote).
    """

    def __init__(self, message: str, *, key: str | None = None, plugin: str | None = None) -> None:
        super().__init__(message, key=key)
        self.plugin = plugin


class PluginError(UsageError):
    """Base for errors about one plugin; ``.plugin`` is its name."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class PluginNotFoundError(PluginError):
    """A plugin was named (config, CLI, ``requires``) but is not installed or registered."""


class PluginLoadError(PluginError):
    """Importing, configuring or setting up a plugin failed.

    :param distribution: the distribution that provides the plugin, if any.
    :param version: that distribution's version.
    """

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.distribution = distribution
        self.version = version


class PluginValidationError(PluginError):
    """A plugin class does not honour the plugin contract (bad hook name, bad metadata)."""


class PluginDependencyError(PluginError):
    """A requirement is missing, has the wrong version, failed itself, or forms a cycle."""


class PluginConflictError(PluginError):
    """Two plugins declare a conflict, or claim the same provider; ``.other`` is the second."""

    def __init__(self, message: str, *, plugin: str | None = None, other: str | None = None) -> None:
        super().__init__(message, plugin=plugin)
        self.other = other


class ProviderError(UsageError):
    """A provider lookup or registration is invalid (unknown kind or name, duplicate)."""


class HookError(UsageError):
    """A hook registration or trigger names an unknown event or an unusable handler."""


class CheckpointError(UsageError):
    """A checkpoint cannot be written or read safely; ``.path`` names the file."""

    def __init__(self, message: str, *, path: Any = None) -> None:
        super().__init__(message)
        self.path = path


class DataError(UsageError):
    """Input text or prepared data cannot be used; ``.path`` names the file, ``.line`` the line (1-based) if known."""

    def __init__(self, message: str, *, path: Any = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class PluginHookError(AptError):
    """A plugin's hook implementation raised while the run was going.

    Raised for critical plugins (and for every plugin under ``plugin_errors: raise``)
    after the ``on_exception`` hooks ran; the original exception is ``__cause__``.

    :param plugin: name of the plugin whose handler raised (``None`` for a bare function).
    :param hook: the event being dispatched.
    :param step: the training step at which it happened, when known.
    """

    def __init__(self, message: str, *, plugin: str | None, hook: str, step: int | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook
        self.step = step


class PluginTeardownError(AptError):
    """One or more plugins' ``teardown`` raised; ``.errors`` holds ``(plugin, exception)`` pairs."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        lines = "; ".join(f"plugin {n!r}: {type(e).__name__}: {e}" for n, e in errors)
        super().__init__(f"{len(errors)} plugin teardown(s) failed (every teardown still ran): {lines}")
        self.errors = errors


class Preempted(BaseException):
    """A preemption signal (SIGTERM, SIGUSR1) ended the run at a step boundary.

    Raised by the Trainer after the step in progress (and its validation) finished, so the
    training state is exact: ``on_exception`` handlers may save it as a regular checkpoint
    (the checkpoint plugin marks it ``latest``). A ``BaseException``, like
    ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it.

    :param signum: the signal's number.
    :param step: the global step at which the run stopped.
    """

    def __init__(self, signum: int, step: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum = signum
        self.step = step

    @property
    def exit_status(self) -> int:
        """``128 + signum``: what a shell reports for a process ended by that signal (143 for SIGTERM)."""
        return 128 + self.signum
