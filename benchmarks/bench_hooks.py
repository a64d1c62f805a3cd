"""Per-event dispatch time: APT's HookManager versus raw pluggy, side by side in one run.

For 0, 1, 10 and 50 handlers of ``on_step_end`` (each a plain function taking two of
the hook's arguments), time ``hook_manager.trigger(...)`` and the equivalent raw pluggy
call ``pm.hook.on_step_end(...)`` with the same functions as hook implementations.
Prints microseconds per event and the ratio APT / pluggy.

Targets (issue 2): at most 1.5x raw pluggy with 10 handlers; under 1 us with none.

    python benchmarks/bench_hooks.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from typing import Any

import pluggy
from apt.plugins import HookManager
from apt.plugins.hookspecs import Hookspecs


KWARGS: dict[str, Any] = dict(trainer=None, model=None, batch=None, epoch=0, step=1, loss=0.5, metrics={})


def make_handler(i: int) -> Any:
    def handler(step: int, loss: float) -> None:
        return None

    handler.__qualname__ = f"handler_{i}"
    return handler


def raw_pluggy(n: int) -> Any:
    pm = pluggy.PluginManager("apt")
    pm.add_hookspecs(Hookspecs)
    impl = pluggy.HookimplMarker("apt")
    for i in range(n):
        ns = type(f"P{i}", (), {"on_step_end": staticmethod(impl(make_handler(i)))})
        pm.register(ns(), name=f"p{i}")
    hook = pm.hook.on_step_end
    return lambda: hook(**KWARGS)


def apt_hooks(n: int) -> Any:
    hm = HookManager()
    for i in range(n):
        hm.register("on_step_end", make_handler(i))
    trigger = hm.trigger
    return lambda: trigger("on_step_end", **KWARGS)


def per_call_us(fn: Any, repeat: int, number: int) -> float:
    times = timeit.repeat(fn, repeat=repeat, number=number)
    return statistics.median(times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'handlers':>8} {'pluggy us':>10} {'APT us':>10} {'APT/pluggy':>11}")
    for n in (0, 1, 10, 50):
        raw, apt = raw_pluggy(n), apt_hooks(n)
        number = max(args.number // max(n, 1), 1000)
        # interleave the two so that machine noise hits both alike
        raw_t, apt_t = [], []
        for _ in range(args.repeat):
            raw_t.append(per_call_us(raw, 1, number))
            apt_t.append(per_call_us(apt, 1, number))
        r, a = statistics.median(raw_t), statistics.median(apt_t)
        print(f"{n:>8} {r:>10.3f} {a:>10.3f} {a / r:>10.2f}x")
    print("targets: APT/pluggy <= 1.5x at 10 handlers; APT < 1 us at 0 handlers")


if __name__ == "__main__":
    main()
