"""The events a class handles: methods named after an event and ``@hook("event")`` methods.

Aliases such as ``on_epoch_start`` are mapped to their canonical event; a method named
``on_*`` (or decorated with ``@hook``) that matches no event is reported as suspicious.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from apt.plugins._static._hierarchy import _Hierarchy
from apt.plugins._static._modules import _Module
from apt.plugins._static._names import _Resolver
from apt.plugins._static._records import _NOT_HOOKS
from apt.plugins._static._records import _Node
from apt.plugins._static._records import _Unreadable
from apt.plugins.hookspecs import ALIASES
from apt.plugins.hookspecs import HOOK_NAMES
from apt.plugins.hookspecs import HookEvents


__all__ = ["_read_hooks"]

# Where apt's own `hook` decorator and `HookEvents` constants live.
_HOOK_DECORATORS = frozenset({"apt.plugins.hook", "apt.plugins.hooks.hook"})
_HOOK_EVENTS = frozenset({"apt.plugins.HookEvents", "apt.plugins.hookspecs.HookEvents"})
# The last parts of those names: a re-export is followed only for a name ending in one of them.
_HOOK_NAMES = frozenset({"hook", "HookEvents"})


def _read_hooks(hierarchy: _Hierarchy, mro: list[_Node]) -> tuple[set[str], set[str], bool]:
    """(events handled, misspelt handler names, whether more may hide) along the MRO.

    The method that wins a name is the one the kernel finds with ``getattr(cls, name)``:
    it is a handler when named after an event (and not Plugin's no-op), and for every
    ``@hook("event")`` it carries; a method it overrides contributes nothing.
    """
    hooks: set[str] = set()
    suspicious: set[str] = set()
    hooks_unknown = False
    names: set[str] = {*HOOK_NAMES, *ALIASES}
    for node in mro:
        if node.kind == "unresolved":
            hooks_unknown = True  # it may define @hook methods under any name
        elif node.cls is not None:
            body = hierarchy.body(node.cls)
            hooks_unknown = hooks_unknown or body.hooks_unknown
            names.update(body.bindings)
    for name in sorted(names):
        hit = hierarchy.lookup(mro, name, skip_unresolved=True)
        if hit is None or hit.node.cls is None:
            continue
        binding = hit.binding
        is_event_name = name.startswith("on_") and name not in _NOT_HOOKS
        if isinstance(binding, _Unreadable):
            hooks_unknown = hooks_unknown or is_event_name
        elif isinstance(binding, ast.FunctionDef | ast.AsyncFunctionDef):
            if is_event_name:
                canonical = ALIASES.get(name, name)
                if canonical in HOOK_NAMES:
                    hooks.add(canonical)
                else:
                    suspicious.add(name)
            for event in _hook_marks(hierarchy.resolver, hit.node.cls.owner, binding):
                if event is None:
                    hooks_unknown = True
                elif ALIASES.get(event, event) in HOOK_NAMES:
                    hooks.add(ALIASES.get(event, event))
                else:
                    suspicious.add(name)  # @hook("on_stepp_end") fails when the module is imported
        elif is_event_name and not (isinstance(binding, ast.Constant) and binding.value is None):
            # `on_epoch_start = on_epoch_begin`: the attribute is a handler too
            canonical = ALIASES.get(name, name)
            if canonical in HOOK_NAMES:
                hooks.add(canonical)
    return hooks, suspicious, hooks_unknown


def _hook_marks(resolver: _Resolver, mod: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[str | None]:
    """The event of each ``@hook(...)`` decorator of ``fn`` (None where it cannot be read)."""
    for dec in fn.decorator_list:
        if not isinstance(dec, ast.Call) or resolver.dotted(mod, dec.func, _HOOK_NAMES) not in _HOOK_DECORATORS:
            continue
        arg = dec.args[0] if dec.args else next((k.value for k in dec.keywords if k.arg == "event"), None)
        if arg is None or isinstance(arg, ast.Starred):
            yield None
            continue
        ok, literal = resolver.literal(mod, arg, 0)
        if not ok and isinstance(arg, ast.Attribute) and resolver.dotted(mod, arg.value, _HOOK_NAMES) in _HOOK_EVENTS:
            literal = getattr(HookEvents, arg.attr, None)  # @hook(HookEvents.ON_STEP_END)
            ok = isinstance(literal, str)
        yield literal if ok and isinstance(literal, str) else None
