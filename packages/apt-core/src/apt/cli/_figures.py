"""How ``apt plot`` arranges a run's metrics into readable figures.

Rules (each a fix for a plot that could not be read):

- one series *family* per panel: the same quantity across layers (``moe/layer0/aux_loss``,
  ``moe/layer1/aux_loss`` ...) shares a panel, one line per layer and the aggregate
  (``moe/aux_loss``) in black; quantities of different meaning, hence scale, never share
  an axis;
- an indexed family (``load_e0`` ... ``load_e7``: one value per expert) is a heatmap, one
  small multiple per layer, never 17 lines on a 10-colour cycle;
- more than 10 lines in a panel get an explicit palette sampled from a colormap;
- counters (``align/num_updates``: named ``num_*``, ``*_count``, ``*_steps`` ... and integers
  that only grow; ``epoch`` and ``step`` are the axes) and constants
  (``moe/aux_loss_weight``) are not drawn as metrics; constants are listed under the figure;
- every y axis is labelled, with a unit where there is one; bits-per-byte panels show
  the unigram baseline of the run's text (``summary.json``'s ``baseline_bpb``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any


__all__ = ["Panel", "is_constant", "is_counter", "plan_group", "series", "y_label"]

# core keys drawn elsewhere or pure bookkeeping
NOT_SERIES = frozenset({"step", "epoch", "loss", "val_loss", "train_loss"})
_INDEXED = re.compile(r"^(?P<stem>.*?[a-z_])(?P<index>\d+)$")
# units of the names whose unit is known; a plugin's other series keep their bare name
_UNITS = (
    ("tokens_per_s", "tokens / s"),
    ("grad_norm", "L2 norm (before clipping)"),
    ("lr", "learning rate"),
    ("bpb", "bits per byte"),
    ("over_mean", "x mean"),
    ("frac", "fraction"),
    ("load", "fraction of slots"),
    ("decay", "EMA decay"),
)


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the records that hold a number for ``key``."""
    points = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool) and "step" in r
    ]
    return [p[0] for p in points], [p[1] for p in points]


_COUNTER_NAME = re.compile(r"^(num_|n_)|(_count|_counter|_updates|_steps|_total)$|^(count|updates|steps)$")


def is_counter(key: str, values: list[float]) -> bool:
    """A counter (``align/num_updates``, ``x/n_steps``): named like one, and only growing.

    Bookkeeping, not a metric: drawn, it runs to hundreds and flattens every other line.
    (Not necessarily integers: a record holds the mean of a plugin's values over the
    steps it covers.)
    """
    return (
        _COUNTER_NAME.search(key.rsplit("/", 1)[-1]) is not None
        and len(values) > 2
        and all(b >= a for a, b in zip(values, values[1:], strict=False))
        and values[-1] > values[0]
    )


def is_constant(values: list[float]) -> bool:
    return len(values) > 1 and all(v == values[0] for v in values)


def y_label(name: str) -> str:
    """The leaf name with its unit, e.g. ``"dropped_frac (fraction)"``."""
    for suffix, unit in _UNITS:
        if name == suffix or name.endswith(suffix) or name.endswith(suffix + "s") or f"{suffix}_" in name:
            return f"{name} ({unit})"
    return name


@dataclass
class Panel:
    """One axis: ``lines`` (label -> key) for a family of lines, or ``heatmap`` rows (label -> key)."""

    title: str
    ylabel: str
    lines: dict[str, str] = field(default_factory=dict)
    heatmap: dict[str, str] = field(default_factory=dict)
    #: every line label of the figure, in order: a label (layer2) has the same colour in every panel
    labels: list[str] = field(default_factory=list)


def plan_group(prefix: str, keys: list[str], records: list[dict[str, Any]]) -> tuple[list[Panel], dict[str, float]]:
    """The panels of one prefix group (``moe``, ``align``, ``loss`` ...) and its constants.

    Keys are ``prefix/[middle/]leaf``. Leaves with a numeric index become heatmaps (one per
    middle part); other leaves become one panel each, a line per middle part.
    """
    constants: dict[str, float] = {}
    by_leaf: dict[str, dict[str, str]] = defaultdict(dict)  # leaf -> {middle or "all": key}
    indexed: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)  # (middle, stem) -> {index: key}
    for key in keys:
        _, values = series(records, key)
        if not values or key.endswith("val_bpb") or is_counter(key, values):
            continue
        if is_constant(values):
            constants[key] = values[0]
            continue
        parts = key.split("/")
        leaf = parts[-1] if len(parts) > 1 else key
        middle = "/".join(parts[1:-1]) or "all"
        match = _INDEXED.match(leaf)
        if match and len(parts) > 2:
            indexed[(middle, match["stem"])][match["index"]] = key
        else:
            by_leaf[leaf][middle] = key
    panels: list[Panel] = []
    labels = sorted({m for lines in by_leaf.values() for m in lines if m != "all"}, key=_natural)
    for leaf, lines in by_leaf.items():
        ordered = dict(sorted(lines.items(), key=lambda kv: _natural(kv[0])))
        title = f"{prefix}/{leaf}" if any("/" in key for key in ordered.values()) else leaf
        # a loss term is added to the cross-entropy: nats, already weighted
        ylabel = f"{leaf} (nats, weighted)" if prefix == "loss" else y_label(leaf)
        panels.append(Panel(title=title, ylabel=ylabel, lines=ordered, labels=labels))
    for (middle, stem), rows in sorted(indexed.items(), key=lambda kv: (_natural(kv[0][0]), kv[0][1])):
        if len(rows) == 1:  # one index alone is a plain series
            ((index, key),) = rows.items()
            panels.append(Panel(title=key, ylabel=y_label(stem + index), lines={middle: key}))
            continue
        heat = {idx: rows[idx] for idx in sorted(rows, key=int)}
        panels.append(Panel(title=f"{prefix}/{middle}/{stem}*", ylabel=y_label(stem.rstrip("_")), heatmap=heat))
    return panels, constants


def _natural(text: str) -> tuple[Any, ...]:
    """``layer2`` before ``layer10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def palette(n: int) -> list[Any]:
    """``n`` distinguishable colours: tab10 up to 10, else evenly spaced on viridis."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def draw_panel(ax: Any, panel: Panel, records: list[dict[str, Any]], fig: Any) -> None:
    """Draw ``panel`` on ``ax``: lines with an explicit palette, or a heatmap with its colour bar."""
    import numpy as np

    ax.set_title(panel.title, fontsize="small")
    if panel.heatmap:
        steps = sorted({s for key in panel.heatmap.values() for s in series(records, key)[0]})
        column = {s: i for i, s in enumerate(steps)}
        grid = np.full((len(panel.heatmap), len(steps)), np.nan)
        for row, key in enumerate(panel.heatmap.values()):
            for s, v in zip(*series(records, key), strict=True):
                grid[row, column[s]] = v
        extent = (steps[0], steps[-1], len(panel.heatmap) - 0.5, -0.5)
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", extent=extent)
        ax.set_yticks(range(len(panel.heatmap)), list(panel.heatmap), fontsize="x-small")
        ax.set_ylabel("index (" + panel.title.rsplit("/", 1)[-1].rstrip("*") + "N)", fontsize="small")
        fig.colorbar(im, ax=ax, label=panel.ylabel)
        return
    colours = palette(max(len(panel.labels), 1))
    for n, (label, key) in enumerate(panel.lines.items()):
        xs, ys = series(records, key)
        aggregate = label == "all" and len(panel.lines) > 1
        colour = colours[panel.labels.index(label)] if label in panel.labels else colours[n % len(colours)]
        ax.plot(
            xs, ys, "-" if len(xs) > 1 else "o", markersize=3, label="mean" if aggregate else label,
            color="black" if aggregate else colour, linewidth=2.0 if aggregate else 1.0,
        )  # fmt: skip
    ax.set_ylabel(panel.ylabel, fontsize="small")
    if len(panel.lines) > 1:
        ax.legend(fontsize="x-small", ncol=2 if len(panel.lines) > 5 else 1)
    ax.grid(alpha=0.3)


def grid_shape(n: int) -> tuple[int, int]:
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    return math.ceil(n / cols), cols
