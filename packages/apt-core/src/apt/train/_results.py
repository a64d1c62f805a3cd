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


__all__ = ["as_metrics", "checked_loss_terms"]


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
