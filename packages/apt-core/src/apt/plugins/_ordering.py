"""Plugin order: requirements first (topological), then priority (higher first), then name."""

from __future__ import annotations

import heapq

from apt.errors import PluginDependencyError


__all__ = ["check_cycles", "resolve_order"]


def resolve_order(requires: dict[str, list[str]], priority: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """The run order of plugins and each one's *effective* priority.

    A requirement must never run after what requires it, so its effective priority is
    lifted to the highest effective priority of the plugins that require it; handlers
    are then sorted by effective priority with the resolved position as tie-break.

    :param requires: plugin -> the (loaded) plugins it requires.
    :param priority: plugin -> its declared priority.
    :raises PluginDependencyError: on a requirement cycle (the message prints it).
    """
    names = list(requires)
    check_cycles(requires)
    dependents: dict[str, list[str]] = {n: [] for n in names}
    for n, ds in requires.items():
        for d in ds:
            dependents[d].append(n)
    effective: dict[str, int] = {}

    def eff(n: str) -> int:
        if n not in effective:
            effective[n] = max([priority[n], *(eff(d) for d in dependents[n])])
        return effective[n]

    indegree = {n: len(requires[n]) for n in names}
    heap = [(-eff(n), n) for n in names if indegree[n] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, n = heapq.heappop(heap)
        order.append(n)
        for m in dependents[n]:
            indegree[m] -= 1
            if indegree[m] == 0:
                heapq.heappush(heap, (-eff(m), m))
    return order, {n: eff(n) for n in names}


def check_cycles(deps: dict[str, list[str]]) -> None:
    """Raise PluginDependencyError naming the first requirement cycle found (in name order)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in deps.get(n, ()):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise PluginDependencyError(
                    f"requirement cycle: {' -> '.join(cycle)}; remove one of these requires", plugin=n
                )
            if d in deps and state.get(d) is None:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(deps):
        if state.get(n) is None:
            visit(n)
