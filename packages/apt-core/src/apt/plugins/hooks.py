"""The HookManager: register handlers for events and trigger them, through pluggy.

Every handler (a plugin's lifecycle method, or any function given to
:meth:`HookManager.register`) becomes one pluggy hook implementation of the event's
hookspec (see :mod:`apt.plugins.hookspecs`). Pluggy does the dispatch; APT adds, per
handler, a small generated adapter that

- passes exactly the keyword arguments the handler asks for (or all of them),
- evaluates its condition,
- records statistics (calls, skipped, errors, total / max seconds), and
- catches its exception so that the other handlers of the event still run; the
  error policy is applied once the event's dispatch is over.

Order: higher ``priority`` first; ties by the owning plugin's resolved position (its
``requires`` come first), then plugin name, then registration order. Disabled plugins'
adapters are taken out of pluggy, and an event without handlers returns at once.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import pluggy

from apt.core.config import did_you_mean
from apt.errors import HookError
from apt.errors import PluginHookError
from apt.plugins._conditions import Condition
from apt.plugins._conditions import as_condition
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import PROJECT
from apt.plugins.hookspecs import Hookspecs
from apt.plugins.hookspecs import hookimpl


if TYPE_CHECKING:
    from apt.plugins.base import Plugin


__all__ = ["Handler", "HandlerStats", "HookManager", "hook", "resolve_event"]

log = logging.getLogger("apt.hooks")

F = TypeVar("F", bound=Callable[..., Any])
_Entry = tuple[str, list[Any], tuple[str, ...], bool, bool, frozenset[str]]

# Events whose results are kept with the name of the plugin that returned them.
ATTRIBUTED: frozenset[str] = frozenset(
    {"on_compute_loss", "on_step_end", "on_validation_end", "on_epoch_end", "on_save_checkpoint"}
)
# Arguments that carry a {plugin name: value} map; each handler receives its own value.
PER_PLUGIN_ARGS: dict[str, str] = {"on_load_checkpoint": "state"}

_now = time.perf_counter


def resolve_event(event: str, known: Any = HOOK_NAMES) -> str:
    """The canonical name of ``event`` (aliases resolved); unknown names raise HookError."""
    event = ALIASES.get(event, event)
    if event not in known:
        raise HookError(
            f"unknown hook event {event!r}{did_you_mean(event, [*known, *ALIASES])}; "
            f"events are listed by apt.plugins.HookEvents"
        )
    return event


@dataclass(slots=True)
class HandlerStats:
    """Always-on statistics of one handler."""

    calls: int = 0
    skipped: int = 0
    errors: int = 0
    total: float = 0.0
    max: float = 0.0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "skipped": self.skipped,
            "errors": self.errors,
            "total_s": self.total,
            "mean_s": self.total / self.calls if self.calls else 0.0,
            "max_s": self.max,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class Handler:
    """One registered handler of one event."""

    event: str
    fn: Callable[..., Any]
    owner: Plugin | None
    priority: int | None
    condition: Condition | None
    seq: int
    stats: HandlerStats = field(default_factory=HandlerStats)
    adapter: Any = None

    @property
    def plugin(self) -> str | None:
        return self.owner.get_name() if self.owner is not None else None

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    @property
    def enabled(self) -> bool:
        return self.owner is None or self.owner.is_enabled()

    def key(self) -> tuple[Any, ...]:
        return (self.fn.__func__, self.fn.__self__) if inspect.ismethod(self.fn) else (self.fn,)


class _Failure:
    __slots__ = ("exc", "handler")

    def __init__(self, handler: Handler, exc: Exception) -> None:
        self.handler = handler
        self.exc = exc


class HookManager:
    """Event-driven hooks on top of pluggy; usable on its own.

    >>> hook_manager.register('on_epoch_start', my_hook, priority=10)
    >>> hook_manager.register('on_epoch_end', save_checkpoint, condition=every_n_epochs(5))
    >>> hook_manager.trigger('on_epoch_start', epoch=5)

    :param error_policy: ``"isolate"`` (default): a non-critical plugin whose handler
        raises is disabled with a warning; ``"raise"``: every handler error stops the run.
    """

    def __init__(self, error_policy: str = "isolate") -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(Hookspecs)
        self._handlers: dict[str, list[Handler]] = {}
        # event (and alias) -> (event, implementations, argument names, firstresult,
        # attributed, argument-name set) for events that have at least one enabled
        # handler; the fast path of trigger().
        self._active: dict[str, _Entry] = {}
        # event -> the adapters registered with pluggy now (what _rebuild must take out)
        self._in_pluggy: dict[str, list[Any]] = {}
        # pluggy's hook executor (the one HookCaller.__call__ ends in; tracing hooks it too)
        self._hookexec = self._pm._hookexec
        self._clock = [0.0]  # see _ADAPTER_TEMPLATE
        self._known: set[str] = set(HOOK_NAMES) | set(ALIASES)
        self._middleware: list[Callable[[str, dict[str, Any]], dict[str, Any] | None]] = []
        self._failures: list[_Failure] = []
        # the plugin whose setup() is running (set by the PluginManager): plain functions it
        # registers belong to it, so they are disabled, torn down and attributed with it
        self._setup_owner: Plugin | None = None
        self._seq = itertools.count()
        # plugin name -> (effective priority, resolved position), set by the PluginManager
        self._order: dict[str, tuple[int, int]] = {}
        self.error_policy = error_policy

    # --- registration -----------------------------------------------------------------

    def register(
        self,
        event: str,
        fn: Callable[..., Any],
        priority: int | None = None,
        condition: Any = None,
        *,
        owner: Plugin | None = None,
    ) -> Handler:
        """Register ``fn`` for ``event``; returns its :class:`Handler`.

        ``fn`` is called with the keyword arguments it names (or all, with ``**kwargs``).
        ``priority`` defaults to the owning plugin's priority (0 for plain functions).
        Registering the same function or bound method again for the same event returns
        the existing handler: it never runs twice.
        """
        event = resolve_event(event)
        if not callable(fn):
            raise HookError(f"handler for {event!r} must be callable, got {fn!r}")
        if owner is None:
            owner = _plugin_of(fn) or self._setup_owner
        if owner is not None and owner.hook_manager is None:
            owner.hook_manager = self  # so that its enable()/disable() reach this manager
        cond = as_condition(condition) if condition is not None else None
        if cond is not None:
            _check_condition(event, cond, self._spec_args(event))
        handler = Handler(event, fn, owner, priority, cond, next(self._seq))
        for existing in self._handlers.get(event, ()):
            if existing.key() == handler.key():
                return existing
        handler.adapter = self._make_adapter(handler)
        self._handlers.setdefault(event, []).append(handler)
        self._rebuild(event)
        return handler

    def hook(self, event: str, priority: int | None = None, condition: Any = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register` on this manager."""

        def decorate(fn: F) -> F:
            self.register(event, fn, priority=priority, condition=condition)
            return fn

        return decorate

    def unregister(self, event: str, fn: Callable[..., Any] | Handler | None = None) -> int:
        """Remove ``fn`` (or every handler, when ``fn`` is None) from ``event``; returns how many."""
        event = resolve_event(event)
        handlers = self._handlers.get(event, [])
        if fn is None:
            gone = list(handlers)
        elif isinstance(fn, Handler):
            gone = [h for h in handlers if h is fn]
        else:
            probe = Handler(event, fn, None, None, None, -1)
            gone = [h for h in handlers if h.key() == probe.key()]
        for h in gone:
            handlers.remove(h)
        if gone:
            self._rebuild(event)
        return len(gone)

    def unregister_owner(self, owner: Plugin) -> int:
        """Remove every handler that belongs to ``owner``."""
        count = 0
        for event, handlers in self._handlers.items():
            mine = [h for h in handlers if h.owner is owner]
            for h in mine:
                handlers.remove(h)
            if mine:
                count += len(mine)
                self._rebuild(event)
        return count

    def add_middleware(self, fn: Callable[[str, dict[str, Any]], dict[str, Any] | None]) -> None:
        """``fn(event, kwargs)`` runs before every dispatch and may return rewritten kwargs."""
        self._middleware.append(fn)

    def remove_middleware(self, fn: Callable[[str, dict[str, Any]], dict[str, Any] | None]) -> None:
        self._middleware.remove(fn)

    def clear(self) -> None:
        """Remove every handler and middleware (statistics go with them)."""
        for event in list(self._handlers):
            self._handlers[event] = []
            self._rebuild(event)
        self._middleware.clear()

    # --- dispatch ---------------------------------------------------------------------

    def trigger(self, event: str, /, **kwargs: Any) -> list[Any]:
        """Call every enabled handler of ``event``; returns their non-None results in order.

        Arguments the caller leaves out reach handlers as ``None``. When a handler
        raises, the others still run; then the error policy applies: a critical
        plugin's (or a plain function's) error raises :class:`PluginHookError`, a
        non-critical plugin is disabled with a warning.
        """
        entry = self._active.get(event)
        if entry is None:
            if event in self._known:
                return []
            resolve_event(event)  # raises with a did-you-mean
        results = self._dispatch(event, entry, kwargs)  # type: ignore[arg-type]
        if entry[3]:  # type: ignore[index]  # firstresult
            return [] if results is None else [results]
        if entry[4]:  # type: ignore[index]  # attributed: drop the owners
            return [r for _, r in results]
        return results  # type: ignore[no-any-return]

    def trigger_by_plugin(self, event: str, /, **kwargs: Any) -> list[tuple[str | None, Any]]:
        """Like :meth:`trigger`, with each result paired with its plugin's name."""
        event = resolve_event(event)
        if event not in ATTRIBUTED:
            raise HookError(
                f"event {event!r} does not keep result owners; use trigger(), or one of {sorted(ATTRIBUTED)}"
            )
        entry = self._active.get(event)
        if entry is None:
            return []
        return list(self._dispatch(event, entry, kwargs))

    def _dispatch(self, event: str, entry: _Entry, kwargs: dict[str, Any]) -> Any:
        """Run pluggy's executor over the event's implementations; then settle handler errors."""
        name, impls, argnames, firstresult, _, argset = entry
        if self._middleware:
            kwargs = self._apply_middleware(event, kwargs)
        # exactly the hook's arguments, usually in its order (the trainer's calls): one tuple compare
        if tuple(kwargs) != argnames and (len(kwargs) != len(argnames) or not kwargs.keys() >= argset):
            kwargs = _complete_args(name, kwargs, argnames, argset)  # raises on a misspelt argument
        clock = self._clock
        outer = clock[0]
        failures = self._failures
        mark = len(failures)  # a nested dispatch settles only the failures recorded after its mark
        clock[0] = _now()
        try:
            results = self._hookexec(name, impls, kwargs, firstresult)
        except BaseException:
            # a fatal error of a nested dispatch (see the adapter) or an interrupt: this
            # dispatch's own failures are moot, and must not be settled by a later one
            clock[0] = outer
            del failures[mark:]
            raise
        clock[0] = outer
        if len(failures) > mark:
            mine = failures[mark:]
            del failures[mark:]
            self._settle_failures(mine, kwargs)
        return results

    def has_handlers(self, event: str) -> bool:
        """Whether ``event`` has at least one enabled handler (cheap)."""
        return event in self._active

    def _apply_middleware(self, event: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        event = ALIASES.get(event, event)
        for mw in self._middleware:
            name = getattr(mw, "__qualname__", repr(mw))
            try:
                out = mw(event, dict(kwargs))
            except Exception as exc:
                raise HookError(f"middleware {name!r} raised on hook {event!r}: {type(exc).__name__}: {exc}") from exc
            if out is not None:
                if not isinstance(out, dict):
                    raise HookError(
                        f"middleware {name!r} returned {type(out).__name__} on hook {event!r}; "
                        "return the rewritten keyword arguments as a dict, or None to keep them"
                    )
                kwargs = out
        return kwargs

    def _record_failure(self, handler: Handler, exc: Exception) -> None:
        self._failures.append(_Failure(handler, exc))

    def _settle_failures(self, failures: list[_Failure], kwargs: dict[str, Any]) -> None:
        step = kwargs.get("step")
        fatal: list[tuple[_Failure, str]] = []
        for failure in failures:
            handler, exc = failure.handler, failure.exc
            who = f"plugin {handler.plugin!r}" if handler.owner is not None else f"handler {handler.name!r}"
            where = f" at step {step}" if step is not None else ""
            message = f"{who} raised in hook {handler.event!r}{where}: {type(exc).__name__}: {exc}"
            handler.stats.last_error = message
            owner = handler.owner
            if owner is None or self.error_policy == "raise" or owner.is_critical():
                fatal.append((failure, message))
            elif owner.is_enabled():
                log.warning(
                    "%s; the plugin is not critical, so it is disabled for the rest of the run "
                    "(set plugin_errors: raise to stop instead)",
                    message,
                    exc_info=exc,
                )
                owner._disable_for_error(message)
        if fatal:
            failure, message = fatal[0]
            more = f" (and {len(fatal) - 1} more: {'; '.join(m for _, m in fatal[1:])})" if len(fatal) > 1 else ""
            raise PluginHookError(
                message + more, plugin=failure.handler.plugin, hook=failure.handler.event, step=step
            ) from failure.exc

    # --- ordering and the pluggy side ---------------------------------------------------

    def set_plugin_order(self, order: dict[str, tuple[int, int]]) -> None:
        """Called by the PluginManager: ``{plugin: (effective priority, position)}``."""
        self._order = dict(order)
        for event in list(self._handlers):
            self._rebuild(event)

    def _sort_key(self, h: Handler) -> tuple[Any, ...]:
        plugin = h.plugin
        eff, pos = self._order.get(plugin, (None, 1 << 30)) if plugin is not None else (None, 1 << 30)
        if h.priority is not None:
            prio = h.priority
        elif eff is not None:
            prio = eff
        else:
            prio = h.owner.priority if h.owner is not None else 0
        return (-prio, pos, plugin or "", h.seq)

    def ordered(self, event: str) -> list[Handler]:
        """Every handler of ``event`` (enabled or not) in the order it runs."""
        return sorted(self._handlers.get(resolve_event(event), ()), key=self._sort_key)

    def _rebuild(self, event: str) -> None:
        """Re-register ``event``'s enabled adapters with pluggy in dispatch order."""
        # everything registered before goes, removed handlers included
        for adapter in self._in_pluggy.pop(event, ()):
            self._pm.unregister(adapter)
        enabled = [h for h in self.ordered(event) if h.enabled]
        # pluggy calls implementations last-registered-first: register in reverse order.
        for h in reversed(enabled):
            self._pm.register(h.adapter, name=f"apt-handler-{h.seq}")
        self._in_pluggy[event] = [h.adapter for h in enabled]
        names = [event, *(a for a, c in ALIASES.items() if c == event)]
        if enabled:
            caller = getattr(self._pm.hook, event)
            spec = caller.spec
            # pluggy's own executor over a snapshot of the implementations, taken here
            # because every change of this event's handlers comes through _rebuild.
            entry = (
                event,
                caller.get_hookimpls(),
                tuple(spec.argnames),
                bool(spec.opts.get("firstresult")),
                event in ATTRIBUTED,
                frozenset(spec.argnames),
            )
            for name in names:
                self._active[name] = entry
        else:
            for name in names:
                self._active.pop(name, None)

    def _owner_enabled_changed(self, owner: Plugin) -> None:
        for event, handlers in self._handlers.items():
            if any(h.owner is owner for h in handlers):
                self._rebuild(event)

    def _spec_args(self, event: str) -> tuple[str, ...]:
        return tuple(getattr(self._pm.hook, event).spec.argnames)

    def _make_adapter(self, handler: Handler) -> Any:
        return _build_adapter(self, handler, self._spec_args(handler.event))

    # --- introspection ----------------------------------------------------------------

    def list_hooks(self, event: str | None = None) -> list[str] | dict[str, list[str]]:
        """Handler names of ``event`` in run order, or ``{event: names}`` for every event."""
        if event is not None:
            return [_label(h) for h in self.ordered(event)]
        return {e: [_label(h) for h in self.ordered(e)] for e in HOOK_NAMES if self._handlers.get(e)}

    def handlers(self, event: str | None = None) -> Iterator[Handler]:
        events = [resolve_event(event)] if event is not None else list(self._handlers)
        for e in events:
            yield from self.ordered(e)

    def get_stats(self, event: str | None = None) -> dict[str, Any]:
        """Per event: totals and per-handler statistics (calls, skipped, errors, seconds)."""
        events = [resolve_event(event)] if event is not None else [e for e in HOOK_NAMES if self._handlers.get(e)]
        out: dict[str, Any] = {}
        for e in events:
            handlers = self.ordered(e)
            out[e] = {
                "calls": sum(h.stats.calls for h in handlers),
                "skipped": sum(h.stats.skipped for h in handlers),
                "errors": sum(h.stats.errors for h in handlers),
                "total_s": sum(h.stats.total for h in handlers),
                "handlers": [
                    {"handler": h.name, "plugin": h.plugin, "enabled": h.enabled, **h.stats.as_dict()} for h in handlers
                ],
            }
        return out

    # the original project's name
    get_statistics = get_stats

    def __repr__(self) -> str:
        return f"HookManager({self.list_hooks()})"


def _complete_args(
    event: str, kwargs: dict[str, Any], argnames: tuple[str, ...], argset: frozenset[str]
) -> dict[str, Any]:
    """``kwargs`` with the arguments the caller left out set to None; an unknown one is an error."""
    unknown = next((k for k in kwargs if k not in argset), None)
    if unknown is not None:
        raise HookError(
            f"hook {event!r} has no argument {unknown!r}{did_you_mean(unknown, argnames)}; "
            f"it takes: {', '.join(argnames)}"
        )
    return {**dict.fromkeys(argnames), **kwargs}


def _check_condition(event: str, condition: Condition, spec_args: tuple[str, ...]) -> None:
    missing = sorted(condition.requires - set(spec_args))
    if missing:
        raise HookError(
            f"condition {condition.description} for hook {event!r} takes argument(s) "
            f"{', '.join(map(repr, missing))}, which that hook does not provide; it provides: "
            f"{', '.join(spec_args)} (give the parameter a default or accept **kwargs)"
        )


def _label(h: Handler) -> str:
    return f"{h.plugin}:{h.name}" if h.plugin else h.name


def _plugin_of(fn: Callable[..., Any]) -> Plugin | None:
    from apt.plugins.base import Plugin

    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, Plugin) else None


# --- generated adapters -----------------------------------------------------------------


def _wanted_args(handler: Handler, spec_args: tuple[str, ...]) -> tuple[list[str], bool, bool]:
    """(argument names to pass, pass by keyword?, wants all?) for a handler; validates it."""
    try:
        params = list(inspect.signature(handler.fn).parameters.values())
    except (TypeError, ValueError):
        return list(spec_args), True, True
    if any(p.kind is p.VAR_KEYWORD for p in params):
        extra = [
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in spec_args and p.default is p_empty
        ]
        _check_unknown(handler, extra, spec_args)
        return list(spec_args), True, True
    wanted: list[str] = []
    unknown: list[str] = []
    by_keyword = False
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.name in spec_args:
            wanted.append(p.name)
            if p.kind is p.KEYWORD_ONLY or by_keyword:
                by_keyword = True
        elif p.default is p_empty:
            unknown.append(p.name)
        else:
            by_keyword = True  # a skipped optional parameter: later ones go by keyword
    _check_unknown(handler, unknown, spec_args)
    return wanted, by_keyword, False


p_empty = inspect.Parameter.empty


def _check_unknown(handler: Handler, unknown: list[str], spec_args: tuple[str, ...]) -> None:
    if unknown:
        raise HookError(
            f"handler {handler.name!r} for hook {handler.event!r} takes argument(s) "
            f"{', '.join(map(repr, unknown))}, which that hook does not provide; it provides: "
            f"{', '.join(spec_args)} (give the parameter a default or accept **kwargs)"
        )


# Timing: one clock read per handler. ``_clock[0]`` holds the moment the previous handler
# of this dispatch finished (or the dispatch began), so a handler's time includes the
# little dispatch work before it; trigger() saves and restores the clock around nested
# dispatches, so an outer handler's time includes the events it triggers itself.
_ADAPTER_TEMPLATE = """\
def {event}({params}):
    try:
{prelude}        _r = _fn({call})
    except _Fatal:
        raise  # a critical plugin's error from an event this handler triggered stops the run
    except Exception as _e:
        _clock[0] = _now()
        _st.calls += 1
        _st.errors += 1
        _fail(_h, _e)
        return None
    _t = _now()
    _dt = _t - _clock[0]
    _clock[0] = _t
    _st.calls += 1
    _st.total += _dt
    if _dt > _st.max:
        _st.max = _dt
    return {ret}
"""


def _build_adapter(manager: HookManager, handler: Handler, spec_args: tuple[str, ...]) -> Any:
    """Generate the pluggy implementation for one handler (see the module docstring)."""
    wanted, by_keyword, wants_all = _wanted_args(handler, spec_args)
    params = list(spec_args) if handler.condition is not None else wanted
    prelude = ""
    if handler.condition is not None:
        kw = ", ".join(f"{a!r}: {a}" for a in spec_args)
        prelude += f"        if not _cond({{{kw}}}):\n            _st.skipped += 1\n            return None\n"
    per_plugin = PER_PLUGIN_ARGS.get(handler.event)
    if per_plugin is not None and per_plugin in wanted:
        prelude += f"        {per_plugin} = {per_plugin}.get(_owner) if {per_plugin} is not None else None\n"
    if by_keyword or wants_all:
        call = ", ".join(f"{a}={a}" for a in wanted)
    else:
        call = ", ".join(wanted)
    ret = "(_owner, _r) if _r is not None else None" if handler.event in ATTRIBUTED else "_r"
    source = _ADAPTER_TEMPLATE.format(
        event=handler.event, params=", ".join(params), prelude=prelude, call=call, ret=ret
    )
    namespace: dict[str, Any] = {
        "_now": _now,
        "_clock": manager._clock,
        "_fn": handler.fn,
        "_st": handler.stats,
        "_h": handler,
        "_fail": manager._record_failure,
        "_Fatal": PluginHookError,
        "_cond": handler.condition,
        "_owner": handler.plugin,
    }
    exec(compile(source, f"<apt adapter {handler.event}:{handler.name}>", "exec"), namespace)  # noqa: S102
    impl = hookimpl(namespace[handler.event])

    class _Adapter:
        pass

    adapter = _Adapter()
    setattr(adapter, handler.event, impl)
    return adapter


# --- the @hook decorator ----------------------------------------------------------------

HOOK_MARK = "__apt_hooks__"


def hook(event: str, priority: int | None = None, condition: Any = None) -> Callable[[F], F]:
    """Mark a function as a handler of ``event``.

    On a :class:`~apt.plugins.Plugin` method the plugin manager registers it (the method
    may have any name). On a plain module-level function it is registered with the
    global ``hook_manager`` right away.
    """
    event = resolve_event(event)

    def decorate(fn: F) -> F:
        qualname = getattr(fn, "__qualname__", "")
        parts = qualname.split(".")
        is_method = len(parts) > 1 and parts[-2] != "<locals>"
        if is_method:
            marks = list(getattr(fn, HOOK_MARK, ()))
            marks.append((event, priority, condition))
            setattr(fn, HOOK_MARK, marks)
        else:
            from apt.plugins import hook_manager

            hook_manager.register(event, fn, priority=priority, condition=condition)
        return fn

    return decorate
