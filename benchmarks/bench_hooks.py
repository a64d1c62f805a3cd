"""Per-event dispatch time: APT's HookManager versus raw pluggy, side by side in one run.

For 0, 1, 10 and 50 handlers of ``on_step_end``, three styles:

- ``exact``: handlers name all seven arguments; the trigger passes all of them;
- ``kwargs``: handlers take ``**kwargs`` (the README's style); the trigger passes all;
- ``subset``: handlers name two arguments; the trigger passes only those two (the
  original description's ``hook_manager.trigger('on_step_end', step=..., loss=...)``).

The raw pluggy baseline is the same functions registered as pluggy hook implementations
and called with every argument (pluggy has no ``**kwargs`` or subset call; for ``kwargs``
its handlers name all arguments). APT's numbers include isolation and statistics.
Prints microseconds per event and the ratio APT / pluggy.

Targets (issue 11): every style at most 2.5x raw pluggy with 10 handlers; under 1 us with none.

    python benchmarks/bench_hooks.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import pluggy
from apt.plugins import HookManager
from apt.plugins.hookspecs import Hookspecs


ALL: dict[str, Any] = dict(trainer=None, model=None, batch=None, epoch=0, step=1, loss=0.5, metrics={})
SUBSET: dict[str, Any] = dict(step=1, loss=0.5)


def exact() -> Callable[..., Any]:
    def handler(trainer: Any, model: Any, batch: Any, epoch: int, step: int, loss: float, metrics: Any) -> None:
        return None

    return handler


def kwargs_handler() -> Callable[..., Any]:
    def handler(**kwargs: Any) -> None:
        return None

    return handler


def two() -> Callable[..., Any]:
    def handler(step: int, loss: float) -> None:
        return None

    return handler


Factory = Callable[[], Callable[..., Any]]
# style -> (APT handler, pluggy handler, APT trigger arguments); each call makes a new function,
# as n plugins would have n of them
STYLES: dict[str, tuple[Factory, Factory, dict[str, Any]]] = {
    "exact": (exact, exact, ALL),
    "kwargs": (kwargs_handler, exact, ALL),
    "subset": (two, two, SUBSET),
}


def raw_pluggy(n: int, make: Factory) -> Callable[[], Any]:
    pm = pluggy.PluginManager("apt")
    pm.add_hookspecs(Hookspecs)
    impl = pluggy.HookimplMarker("apt")
    for i in range(n):
        ns = type(f"P{i}", (), {"on_step_end": staticmethod(impl(make()))})
        pm.register(ns(), name=f"p{i}")
    hook = pm.hook.on_step_end
    return lambda: hook(**ALL)


def apt_hooks(n: int, make: Factory, call_args: dict[str, Any]) -> Callable[[], Any]:
    hm = HookManager()
    for _ in range(n):
        hm.register("on_step_end", make())
    trigger = hm.trigger
    return lambda: trigger("on_step_end", **call_args)


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, repeat=1, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'style':>7} {'handlers':>8} {'pluggy us':>10} {'APT us':>10} {'APT/pluggy':>11}")
    worst_at_10 = 0.0
    for style, (apt_fn, raw_fn, call_args) in STYLES.items():
        for n in (0, 1, 10, 50):
            raw, apt = raw_pluggy(n, raw_fn), apt_hooks(n, apt_fn, call_args)
            number = max(args.number // max(n, 1), 1000)
            raw_t, apt_t = [], []
            for _ in range(args.repeat):  # interleaved, so that machine noise hits both alike
                raw_t.append(per_call_us(raw, number))
                apt_t.append(per_call_us(apt, number))
            r, a = statistics.median(raw_t), statistics.median(apt_t)
            if n == 10:
                worst_at_10 = max(worst_at_10, a / r)
            print(f"{style:>7} {n:>8} {r:>10.3f} {a:>10.3f} {a / r:>10.2f}x")
    print(f"worst APT/pluggy at 10 handlers: {worst_at_10:.2f}x (target <= 2.5x); APT at 0 handlers: target < 1 us")


if __name__ == "__main__":
    main()
