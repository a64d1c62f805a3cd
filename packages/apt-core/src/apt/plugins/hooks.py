"""The HookManager: every handler (a plugin's lifecycle method, or a registered function) is one
pluggy hook implementation of its event's hookspec. :meth:`HookManager.trigger` runs them in one
loop, pluggy's shape plus what APT adds: each handler gets the arguments it names, its condition
is checked, its time and errors are counted, and an error does not stop the others.

Order: higher ``priority`` first; ties by the owning plugin's resolved position, then plugin name,
then registration order. An event's sorted table of enabled handlers is kept until a change.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from typing import Protocol
from typing import TypeVar
from typing import runtime_checkable

import pluggy

from apt.core.config import did_you_mean
from apt.errors import HookError
from apt.errors import PluginHookError
from apt.errors import ReadOnlyConfigError
from apt.plugins._conditions import Condition
from apt.plugins._conditions import as_condition
from apt.plugins._conditions import keyword_params
from apt.plugins.hookspecs import HOOK_MARK
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import PROJECT
from apt.plugins.hookspecs import Hookspecs
from apt.plugins.hookspecs import resolve_event


__all__ = ["Handler", "HandlerStats", "HookManager", "hook", "hook_manager"]

log = logging.getLogger("apt.hooks")

F = TypeVar("F", bound=Callable[..., Any])
Middleware = Callable[[str, dict[str, Any]], dict[str, Any] | None]

# Arguments that carry a {plugin name: value} map; each handler receives its own value.
PER_PLUGIN_ARGS: Final[dict[str, str]] = {"on_load_checkpoint": "state"}

_now = time.perf_counter


@runtime_checkable
class Owner(Protocol):
    """What the hook manager uses of a handler's plugin (a Protocol: no import of the Plugin class)."""

    hook_manager: HookManager | None

    @property
    def priority(self) -> int: ...
    def get_name(self) -> str: ...
    def is_enabled(self) -> bool: ...
    def is_critical(self) -> bool: ...
    def disable_for_error(self, message: str) -> None: ...


@dataclass(slots=True)
class HandlerStats:
    """Always-on statistics of one handler (times in seconds)."""

    calls: int = 0
    skipped: int = 0
    errors: int = 0
    total: float = 0.0
    max: float = 0.0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        counts = {"calls": self.calls, "skipped": self.skipped, "errors": self.errors}
        mean = self.total / self.calls if self.calls else 0.0
        return {**counts, "total_s": self.total, "mean_s": mean, "max_s": self.max, "last_error": self.last_error}


@dataclass(eq=False)
class Handler:
    """One registered handler of one event: what pluggy registers, and how to call ``fn``."""

    event: str
    fn: Callable[..., Any]
    owner: Owner | None
    priority: int | None
    condition: Condition | None
    seq: int
    params: tuple[str, ...] | None  # the hook arguments fn takes by keyword; None: all (**kwargs)
    shared: str | None  # the one of PER_PLUGIN_ARGS it takes, narrowed to its plugin's value
    stats: HandlerStats = field(default_factory=HandlerStats)

    @property
    def plugin(self) -> str | None:
        return self.owner.get_name() if self.owner is not None else None

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    @property
    def enabled(self) -> bool:
        return self.owner is None or self.owner.is_enabled()


class _Pluggy(pluggy.PluginManager):
    """pluggy's manager, where a :class:`Handler` implements its event with its ``fn``."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        if not (isinstance(plugin, Handler) and name == "fn"):
            return None
        return pluggy.HookimplOpts(
            wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=plugin.event
        )


@dataclass(frozen=True, slots=True)
class _Table:
    """What trigger() runs for one event: its enabled handlers in order, and the spec's facts."""

    event: str
    handlers: tuple[Handler, ...]
    argnames: tuple[str, ...]
    firstresult: bool


class HookManager:
    """Event-driven hooks on top of pluggy; usable on its own.

    >>> hook_manager.register('on_epoch_start', my_hook, priority=10)
    >>> hook_manager.register('on_epoch_end', save_checkpoint, condition=every_n_epochs(5))
    >>> hook_manager.trigger('on_epoch_start', epoch=5)

    :param error_policy: ``"isolate"`` (default): a non-critical plugin whose handler
        raises is disabled with a warning; ``"raise"``: every handler error stops the run.
    """

    def __init__(self, error_policy: str = "isolate") -> None:
        self._pm = _Pluggy(PROJECT)
        self._pm.add_hookspecs(Hookspecs)
        self._tables: dict[str, _Table] = {}  # event name as triggered -> its table, until a change
        self._middleware: list[Middleware] = []
        self._seq = itertools.count()
        self._order: dict[str, tuple[int, int]] = {}  # plugin -> (effective priority, position)
        self._setup_owner: Owner | None = None  # plain functions registered now belong to it
        self.error_policy = error_policy

    def register(
        self,
        event: str,
        fn: Callable[..., Any],
        priority: int | None = None,
        condition: Any = None,
        *,
        owner: Owner | None = None,
    ) -> Handler:
        """Register ``fn`` for ``event``; returns its :class:`Handler`.

        ``fn`` is called with the hook arguments it names (or all, with ``**kwargs``).
        ``priority`` defaults to the owning plugin's priority (0 for plain functions).
        Registering the same function or bound method again for the same event returns
        the existing handler: it never runs twice.
        """
        event = resolve_event(event)
        if not callable(fn):
            raise HookError(f"handler for {event!r} must be callable, got {fn!r}")
        existing = next((h for h in self._registered(event) if h.fn == fn), None)
        if existing is not None:
            return existing
        bound_to = getattr(fn, "__self__", None)
        owner = owner or (bound_to if isinstance(bound_to, Owner) else None) or self._setup_owner
        if owner is not None and owner.hook_manager is None:
            owner.hook_manager = self  # so that its enable()/disable() reach this manager
        spec_args = tuple(getattr(self._pm.hook, event).spec.argnames)
        cond = as_condition(condition) if condition is not None else None
        names, required = keyword_params(fn)
        _check_args(f"handler {getattr(fn, '__qualname__', fn)!r}", event, required, spec_args)
        if cond is not None:
            _check_args(f"condition {cond.description}", event, cond.requires, spec_args)
        params = None if names is None else tuple(a for a in names if a in spec_args)
        shared = PER_PLUGIN_ARGS.get(event)
        shared = shared if shared in (spec_args if params is None else params) else None
        handler = Handler(event, fn, owner, priority, cond, next(self._seq), params, shared)
        self._pm.register(handler, name=f"apt-handler-{handler.seq}")
        self._tables.clear()
        return handler

    def hook(self, event: str, priority: int | None = None, condition: Any = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register` on this manager."""

        def decorate(fn: F) -> F:
            self.register(event, fn, priority=priority, condition=condition)
            return fn

        return decorate

    def unregister(self, event: str, fn: Callable[..., Any] | Handler | None = None) -> int:
        """Remove ``fn`` (or every handler, when ``fn`` is None) from ``event``; returns how many."""
        return self._remove(h for h in self._registered(resolve_event(event)) if fn is None or fn in (h, h.fn))

    def unregister_owner(self, owner: Owner) -> int:
        """Remove every handler that belongs to ``owner``."""
        return self._remove(h for h in self.handlers() if h.owner is owner)

    def clear(self) -> None:
        """Remove every handler and middleware (statistics go with them)."""
        self._remove(self.handlers())
        self._middleware.clear()

    def _remove(self, handlers: Iterable[Handler]) -> int:
        gone = list(handlers)
        for h in gone:
            self._pm.unregister(h)
        self._tables.clear()
        return len(gone)

    def add_middleware(self, fn: Middleware) -> None:
        """``fn(event, kwargs)`` runs before every dispatch and may return rewritten kwargs."""
        self._middleware.append(fn)

    def remove_middleware(self, fn: Middleware) -> None:
        self._middleware.remove(fn)

    def begin_setup(self, owner: Owner | None) -> None:
        """Attribute plain functions registered from now on to ``owner`` (None: stop)."""
        self._setup_owner = owner

    def set_plugin_order(self, order: dict[str, tuple[int, int]]) -> None:
        """Called by the PluginManager: ``{plugin: (effective priority, position)}``."""
        self._order = dict(order)
        self._tables.clear()

    def plugin_toggled(self, owner: Owner) -> None:
        """``owner`` was enabled or disabled: its handlers join or leave the dispatch."""
        self._tables.clear()

    def trigger(self, event: str, /, **kwargs: Any) -> list[Any]:
        """Call every enabled handler of ``event``; returns their non-None results in order.

        Arguments the caller leaves out reach handlers as ``None``. When a handler raises, the
        others still run; then a critical plugin's (or a plain function's) error raises
        :class:`PluginHookError` and a non-critical plugin is disabled with a warning.
        """
        table = self._tables.get(event) or self._table(event)
        return [r for _, r in self._run(table, kwargs)] if table.handlers else []

    def trigger_by_plugin(self, event: str, /, **kwargs: Any) -> list[tuple[str | None, Any]]:
        """Like :meth:`trigger`, with each result paired with its plugin's name (None for functions)."""
        table = self._tables.get(event) or self._table(event)
        return self._run(table, kwargs) if table.handlers else []

    def has_handlers(self, event: str) -> bool:
        """Whether ``event`` has at least one enabled handler (cheap)."""
        return bool((self._tables.get(event) or self._table(event)).handlers)

    def _run(self, table: _Table, kwargs: dict[str, Any]) -> list[tuple[str | None, Any]]:
        """The dispatch loop: every handler of ``table`` once, isolated and timed."""
        if self._middleware:
            kwargs = self._apply_middleware(table.event, kwargs)
        if tuple(kwargs) != table.argnames:
            unknown = next((k for k in kwargs if k not in table.argnames), None)
            if unknown is not None:
                raise HookError(
                    f"hook {table.event!r} has no argument {unknown!r}{did_you_mean(unknown, table.argnames)}; "
                    f"it takes: {', '.join(table.argnames)}"
                )
            kwargs = {**dict.fromkeys(table.argnames), **kwargs}  # what the caller left out is None
        results: list[tuple[str | None, Any]] = []
        failures: list[tuple[Handler, Exception]] = []
        start = _now()
        for h in table.handlers:
            try:
                if h.condition is not None and not h.condition(kwargs):
                    h.stats.skipped += 1
                    continue
                args = kwargs if h.params is None else {a: kwargs[a] for a in h.params}
                if h.shared is not None:
                    args = {**args, h.shared: (args[h.shared] or {}).get(h.plugin)}
                result = h.fn(**args)
            except PluginHookError:
                raise  # a critical error of an event this handler triggered itself: the run stops
            except Exception as exc:
                failures.append((h, exc))
                result = None
            end = _now()  # one clock read per handler: its time includes its share of this loop
            stats, took, start = h.stats, end - start, end
            stats.calls += 1
            stats.total += took
            if took > stats.max:
                stats.max = took
            if result is not None:
                results.append((h.plugin, result))
                if table.firstresult:
                    break
        if failures:
            self._settle(failures, kwargs.get("step"))
        return results

    def _table(self, event: str) -> _Table:
        """Build and keep the dispatch table of ``event``: pluggy's implementations, enabled, sorted."""
        canonical = resolve_event(event)
        spec = getattr(self._pm.hook, canonical).spec
        handlers = tuple(h for h in self.ordered(canonical) if h.enabled)
        table = self._tables[event] = _Table(canonical, handlers, spec.argnames, bool(spec.opts.get("firstresult")))
        return table

    def _apply_middleware(self, event: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        for mw in self._middleware:
            name = getattr(mw, "__qualname__", repr(mw))
            try:
                out = mw(event, dict(kwargs))
            except Exception as exc:
                raise HookError(f"middleware {name!r} raised on hook {event!r}: {type(exc).__name__}: {exc}") from exc
            if out is not None and not isinstance(out, dict):
                raise HookError(
                    f"middleware {name!r} returned {type(out).__name__} on hook {event!r}; "
                    "return the rewritten keyword arguments as a dict, or None to keep them"
                )
            kwargs = kwargs if out is None else out
        return kwargs

    def _settle(self, failures: list[tuple[Handler, Exception]], step: Any) -> None:
        """Apply the error policy to one dispatch's handler errors."""
        fatal: list[tuple[Handler, Exception, str]] = []
        where = f" at step {step}" if step is not None else ""
        for handler, exc in failures:
            owner, stats = handler.owner, handler.stats
            who = f"plugin {handler.plugin!r}" if owner is not None else f"handler {handler.name!r}"
            message = f"{who} raised in hook {handler.event!r}{where}: {type(exc).__name__}: {exc}"
            stats.errors, stats.last_error = stats.errors + 1, message
            # writing to a read-only config is a bug in the plugin: never isolated
            if (
                owner is None
                or self.error_policy == "raise"
                or owner.is_critical()
                or isinstance(exc, ReadOnlyConfigError)
            ):
                fatal.append((handler, exc, message))
            elif owner.is_enabled():
                log.warning(
                    "%s; the plugin is not critical, so it is disabled for the rest of the run "
                    "(set plugin_errors: raise to stop instead)",
                    message,
                    exc_info=exc,
                )
                owner.disable_for_error(message)
        if fatal:
            handler, exc, message = fatal[0]
            more = f" (and {len(fatal) - 1} more: {'; '.join(m for *_, m in fatal[1:])})" if len(fatal) > 1 else ""
            raise PluginHookError(message + more, plugin=handler.plugin, hook=handler.event, step=step) from exc

    def _registered(self, event: str) -> list[Handler]:
        impls = getattr(self._pm.hook, event).get_hookimpls()
        return [impl.plugin for impl in impls if isinstance(impl.plugin, Handler)]

    def _sort_key(self, h: Handler) -> tuple[Any, ...]:
        effective, position = self._order.get(h.plugin or "", (None, 1 << 30))
        priority = h.priority if h.priority is not None else effective
        if priority is None:
            priority = h.owner.priority if h.owner is not None else 0
        return (-priority, position, h.plugin or "", h.seq)

    def ordered(self, event: str) -> list[Handler]:
        """Every handler of ``event`` (enabled or not) in the order it runs."""
        return sorted(self._registered(resolve_event(event)), key=self._sort_key)

    def handlers(self, event: str | None = None) -> Iterator[Handler]:
        """Every handler (of ``event``, or of all events) in run order."""
        for e in [event] if event is not None else HOOK_NAMES:
            yield from self.ordered(e)

    def list_hooks(self, event: str | None = None) -> list[str] | dict[str, list[str]]:
        """Handler names of ``event`` in run order, or ``{event: names}`` for every event."""
        if event is not None:
            return [_label(h) for h in self.ordered(event)]
        return {e: labels for e in HOOK_NAMES if (labels := [_label(h) for h in self.ordered(e)])}

    def get_stats(self, event: str | None = None) -> dict[str, Any]:
        """Per event: totals and per-handler statistics (calls, skipped, errors, seconds)."""
        out: dict[str, Any] = {}
        for e in [resolve_event(event)] if event is not None else HOOK_NAMES:
            stats = [
                {"handler": h.name, "plugin": h.plugin, "enabled": h.enabled, **h.stats.as_dict()}
                for h in self.ordered(e)
            ]
            if stats or event is not None:
                out[e] = {k: sum(s[k] for s in stats) for k in ("calls", "skipped", "errors", "total_s")}
                out[e]["handlers"] = stats
        return out

    def __repr__(self) -> str:
        return f"HookManager({self.list_hooks()})"


def _check_args(what: str, event: str, required: Iterable[str], spec_args: tuple[str, ...]) -> None:
    """Refuse a handler or condition with a required parameter that ``event``'s arguments cannot fill."""
    positional = sorted(n.removesuffix("/") for n in required if n.endswith("/"))
    if positional:
        raise HookError(
            f"{what} for hook {event!r} takes {', '.join(map(repr, positional))} positional-only, but hook "
            "arguments are passed by keyword; remove the '/' from its signature"
        )
    unknown = sorted(set(required) - set(spec_args))
    if unknown:
        raise HookError(
            f"{what} for hook {event!r} takes argument(s) {', '.join(map(repr, unknown))}, which that hook "
            f"does not provide; it provides: {', '.join(spec_args)} (give the parameter a default or accept **kwargs)"
        )


def _label(h: Handler) -> str:
    return f"{h.plugin}:{h.name}" if h.plugin else h.name


def hook(event: str, priority: int | None = None, condition: Any = None) -> Callable[[F], F]:
    """Mark a function as a handler of ``event``.

    On a :class:`~apt.plugins.Plugin` method the plugin manager registers it (the method
    may have any name). A plain module-level function is registered with the global
    ``hook_manager`` right away.
    """
    event = resolve_event(event)

    def decorate(fn: F) -> F:
        parts = getattr(fn, "__qualname__", "").split(".")
        if len(parts) > 1 and parts[-2] != "<locals>":  # a method: the plugin manager registers it
            setattr(fn, HOOK_MARK, [*getattr(fn, HOOK_MARK, ()), (event, priority, condition)])
        else:
            hook_manager.register(event, fn, priority=priority, condition=condition)
        return fn

    return decorate


#: The process-wide hook manager (``from apt.plugins import hook_manager``).
hook_manager = HookManager()
