"""The ``plot`` provider ``moe_load``: an expert-load heatmap (layer x expert over steps)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


__all__ = ["plot_expert_load"]

_LOAD_KEY = re.compile(r"^moe/layer(\d+)/load_e(\d+)$")


def plot_expert_load(records: Sequence[dict[str, Any]], run_dir: Path) -> list[Path]:
    """Draw ``run_dir/plots/moe_load.png`` from ``metrics.jsonl`` records.

    Rows of the heatmap are (layer, expert) pairs grouped by layer, columns are the logged
    steps, colour is the fraction of the layer's token slots routed to that expert
    (``1/E`` everywhere means perfect balance). Returns ``[]`` when no record has MoE
    load metrics.
    """
    pairs: set[tuple[int, int]] = set()
    steps: list[float] = []
    rows: list[dict[str, Any]] = []
    for rec in records:
        keys = [(int(m[1]), int(m[2])) for k in rec if (m := _LOAD_KEY.match(k))]
        if keys:
            pairs.update(keys)
            rows.append(rec)
            steps.append(float(rec.get("step", len(steps))))
    if not rows:
        return []

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = sorted(pairs)
    grid = np.full((len(order), len(rows)), np.nan)
    for c, rec in enumerate(rows):
        for r, (layer, expert) in enumerate(order):
            value = rec.get(f"moe/layer{layer}/load_e{expert}")
            if value is not None:
                grid[r, c] = float(value)
    layers = sorted({layer for layer, _ in order})
    experts = max(e for _, e in order) + 1

    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.18 * len(order) + 1.5)))
    im = ax.imshow(
        grid, aspect="auto", interpolation="nearest", cmap="viridis", extent=(steps[0], steps[-1], len(order), 0)
    )
    # one horizontal line between layers, one tick label per layer
    starts = [order.index((layer, min(e for la, e in order if la == layer))) for layer in layers]
    for s in starts[1:]:
        ax.axhline(s, color="white", linewidth=0.8)
    ax.set_yticks([s + sum(1 for la, _ in order if la == layer) / 2 for s, layer in zip(starts, layers, strict=True)])
    ax.set_yticklabels([f"layer {layer}" for layer in layers])
    ax.set_xlabel("step")
    ax.set_title(f"MoE expert load (fraction of slots per expert; balanced = 1/{experts} = {1 / experts:.3f})")
    fig.colorbar(im, ax=ax, label="load fraction")
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "moe_load.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return [out]
