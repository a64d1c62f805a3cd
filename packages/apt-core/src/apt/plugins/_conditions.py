"""Conditions: when a handler runs. Pure functions of the hook's arguments.

Conditions combine with ``&``, ``|`` and ``~``; any plain callable taking some of the
hook's keyword arguments (``lambda epoch: epoch > 3``) works too. Counting follows the
trainer's 0-based indices: ``every_n_epochs(5)`` fires in the 5th, 10th ... epoch, that
is at ``epoch`` = 4, 9, ...; ``every_n_steps(100)`` after steps 100, 200 ... (``step`` =
99, 199, ...). Because they depend only on the counters, conditions resume correctly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

from apt.errors import HookError


__all__ = [
    "Condition",
    "after_epoch",
    "as_condition",
    "before_epoch",
    "every_n_epochs",
    "every_n_steps",
    "keyword_params",
]


class Condition:
    """A predicate over a hook call's keyword arguments.

    :param requires: the arguments it cannot do without; registering it for a hook that
        lacks one of them is an error.
    """

    def __init__(
        self, check: Callable[[Mapping[str, Any]], bool], description: str, requires: frozenset[str] = frozenset()
    ) -> None:
        self._check = check
        self.description = description
        self.requires = requires

    def __call__(self, kwargs: Mapping[str, Any]) -> bool:
        return bool(self._check(kwargs))

    def __and__(self, other: Any) -> Condition:
        return _join(self, as_condition(other), "&", all)

    def __or__(self, other: Any) -> Condition:
        return _join(self, as_condition(other), "|", any)

    def __invert__(self) -> Condition:
        return Condition(lambda kw: not self(kw), f"~{self.description}", self.requires)

    __rand__ = __and__
    __ror__ = __or__

    def __repr__(self) -> str:
        return f"Condition({self.description})"


def _join(a: Condition, b: Condition, op: str, test: Callable[[Iterator[bool]], bool]) -> Condition:
    """``a op b``, evaluated left to right with short-circuit (``test`` is ``all`` or ``any``)."""
    description, requires = f"({a.description} {op} {b.description})", a.requires | b.requires
    return Condition(lambda kw: test(c(kw) for c in (a, b)), description, requires)


def _on(counter: str, test: Callable[[int], bool], description: str) -> Condition:
    """A condition on the integer argument ``counter`` (``epoch`` or ``step``); False when it is missing."""
    return Condition(lambda kw: isinstance(v := kw.get(counter), int) and test(v), description, frozenset({counter}))


def every_n_epochs(n: int) -> Condition:
    """Run in every n-th epoch (0-based ``epoch`` = n-1, 2n-1, ...)."""
    k = _positive(n, "every_n_epochs")
    return _on("epoch", lambda e: (e + 1) % k == 0, f"every_n_epochs({n})")


def every_n_steps(n: int) -> Condition:
    """Run at every n-th step (0-based ``step`` = n-1, 2n-1, ...)."""
    k = _positive(n, "every_n_steps")
    return _on("step", lambda s: (s + 1) % k == 0, f"every_n_steps({n})")


def after_epoch(n: int) -> Condition:
    """Run only in epochs after epoch ``n`` (``epoch > n``)."""
    return _on("epoch", lambda e: e > n, f"after_epoch({n})")


def before_epoch(n: int) -> Condition:
    """Run only in epochs before epoch ``n`` (``epoch < n``)."""
    return _on("epoch", lambda e: e < n, f"before_epoch({n})")


def _positive(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HookError(f"{what}(n) needs a positive integer n, got {n!r}")
    return n


def keyword_params(fn: Callable[..., Any]) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """The calling rule of handlers and conditions, which get a hook's arguments by keyword:
    ``(names, required)``, the parameters ``fn`` takes by keyword (None: it takes ``**kwargs``,
    so all) and those without a default. A required positional-only parameter cannot be
    filled: it is listed as ``"name/"``, an argument no hook provides."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None, frozenset()
    names = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    required = frozenset(
        p.name + "/" * (p.kind is p.POSITIONAL_ONLY)
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    return (None if any(p.kind is p.VAR_KEYWORD for p in params) else names), required


def as_condition(obj: Any) -> Condition:
    """Wrap a plain callable (taking some of the hook's keyword arguments) as a Condition."""
    if isinstance(obj, Condition):
        return obj
    if not callable(obj):
        raise HookError(f"a hook condition must be callable, got {obj!r}")
    names, required = keyword_params(obj)
    description = getattr(obj, "__qualname__", repr(obj))
    if names is None:
        return Condition(lambda kw: obj(**kw), description, required)
    return Condition(lambda kw: obj(**{n: kw[n] for n in names if n in kw}), description, required)
