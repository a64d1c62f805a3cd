"""Plugin order: requirements first (topological), then priority (higher first), then name."""

from __future__ import annotations

import heapq
from graphlib import CycleError
from graphlib import TopologicalSorter

from apt.errors import PluginDependencyError


__all__ = ["resolve_order"]


def resolve_order(requires: dict[str, list[str]], priority: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """The run order of plugins and each one's *effective* priority.

    A requirement must never run after what requires it, so its effective priority is
    lifted to the highest effective priority of the plugins that require it; among the
    plugins whose requirements are placed, the highest effective priority goes next, then
    the first name.

    :param requires: plugin -> the (loaded) plugins it requires.
    :param priority: plugin -> its declared priority.
    :raises PluginDependencyError: on a requirement cycle (the message prints it).
    """
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
