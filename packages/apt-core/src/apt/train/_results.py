"""What plugins hand back to the trainer: named loss terms and metrics, checked before use.

A wrong return value names the plugin and the hook, and says what to return instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from apt.errors import PluginConflictError
from apt.errors import PluginError


__all__ = ["StepMeans", "as_metrics", "checked_loss_terms"]


def checked_loss_terms(results: Iterable[tuple[str | None, Any]]) -> dict[str, Tensor]:
    """Merge ``on_compute_loss`` results, ``(plugin, {name: scalar tensor} or None)``, into one dict.

    :raises PluginError: a result that is not a mapping, or a term that is not a scalar tensor.
    :raises PluginConflictError: two plugins returning a term of the same name.
    """
    terms: dict[str, Tensor] = {}
    owners: dict[str, str | None] = {}
    for plugin, result in results:
        if not result:
            continue
        if not isinstance(result, Mapping):
            raise PluginError(
                f"plugin {plugin!r} returned {type(result).__name__} from on_compute_loss; "
                "return a dict of named scalar tensors ({'aux': tensor}) or None",
                plugin=plugin,
            )
        for name, term in result.items():
            if name in owners:
                raise PluginConflictError(
                    f"loss term {name!r} is returned by plugin {owners[name]!r} and by plugin {plugin!r}; "
                    "rename one of them (each plugin should prefix its terms) or disable one plugin",
                    plugin=plugin,
                    other=owners[name],
                )
            if not isinstance(term, Tensor) or term.numel() != 1:
                raise PluginError(
                    f"plugin {plugin!r} returned loss term {name!r} as {type(term).__name__}"
                    f"{'' if not isinstance(term, Tensor) else ' of shape ' + str(tuple(term.shape))}; "
                    "a loss term must be a scalar tensor",
                    plugin=plugin,
                )
            owners[name] = plugin
            terms[name] = term.reshape(())
    return terms


def as_metrics(result: Any, plugin: str | None, event: str) -> dict[str, float]:
    """A plugin's ``{name: number}`` metrics from ``event`` as floats."""
    if not isinstance(result, Mapping):
        raise PluginError(
            f"plugin {plugin!r} returned {type(result).__name__} from {event}; return a dict of metric "
            "names to numbers (or None)",
            plugin=plugin,
        )
    return {str(k): float(v) for k, v in result.items()}


class StepMeans:
    """Plugins' per-step metrics between two logged records, handed out as means.

    Only every ``training.log_interval``-th step is logged; a metric a plugin returned from
    ``on_step_end`` on the steps in between is not dropped: the next record holds its
    mean over the steps since the previous record that returned it.
    """

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}  # name -> [sum, count]

    def add(self, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            acc = self._sums.setdefault(name, [0.0, 0.0])
            acc[0] += value
            acc[1] += 1

    def pop_means(self) -> dict[str, float]:
        means = {name: total / count for name, (total, count) in self._sums.items() if count}
        self._sums = {}
        return means

    def state_dict(self) -> dict[str, list[float]]:
        return {name: list(acc) for name, acc in self._sums.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = {str(name): [float(acc[0]), float(acc[1])] for name, acc in state.items()}
