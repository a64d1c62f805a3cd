"""The ``plot`` provider ``gradient``: noise scale, term-gradient cosines and the global norm over steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


__all__ = ["plot_gradient"]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in records:
        value = rec.get(key)
        if isinstance(value, (int, float)) and "step" in rec:
            xs.append(float(rec["step"]))
            ys.append(float(value))
    return xs, ys


def plot_gradient(records: Sequence[dict[str, Any]], run_dir: Path) -> list[Path]:
    """Draw ``run_dir/plots/gradient.png`` from ``metrics.jsonl`` records.

    Panels, each only when its metrics exist: the global gradient norm before clipping
    (with the AutoClip/z-score threshold); the noise scale ``B_simple`` and the critical
    batch size it implies (sequences); the cosines between term gradients. Returns ``[]``
    when no record has gradient-plugin metrics.
    """
    keys = list(dict.fromkeys(k for r in records for k in r if k.startswith("grad/")))
    if not keys:
        return []
    cos_keys = [k for k in keys if k.startswith("grad/cos/")]
    panels: list[tuple[str, list[str], str]] = []
    if "grad/norm" in keys:
        panels.append(
            ("gradient norm before clipping", [k for k in ("grad/norm", "grad/clip_threshold") if k in keys], "log")
        )
    if "grad/noise_scale" in keys:
        panels.append(("noise scale B_simple (tokens) / critical batch (sequences)",
                       ["grad/noise_scale", "grad/critical_batch"], "log"))  # fmt: skip
    if cos_keys:
        panels.append(("cosine between term gradients", cos_keys, "linear"))
    if not panels:
        return []

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.8 * len(panels)), squeeze=False, sharex=True)
    for ax, (title, panel_keys, scale) in zip(axes[:, 0], panels, strict=True):
        for key in panel_keys:
            xs, ys = _series(records, key)
            if scale == "log":
                xs, ys = [x for x, y in zip(xs, ys, strict=True) if y > 0], [y for y in ys if y > 0]
            if xs:
                ax.plot(xs, ys, "-" if len(xs) > 1 else "o", label=key.removeprefix("grad/"), markersize=3)
        if scale == "log":
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="grey", linewidth=0.8)
            ax.set_ylim(-1.05, 1.05)
        ax.set_title(title)
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "gradient.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
