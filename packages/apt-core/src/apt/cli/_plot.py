"""``apt plot RUN_DIR``: draw a run's metrics to PNG files under ``RUN_DIR/plots/``.

``loss.png`` shows the training and validation loss; every other series gets a figure:
plain metrics (``lr``, ``grad_norm`` ...) one each, and prefixed ones one per prefix
(``loss_terms.png`` for every ``loss/<term>``, ``moe.png`` for ``moe/...``). Plugins add
their own figures by registering providers of kind ``plot``: a factory
``(records: list[dict], run_dir: Path) -> list[Path]`` that ``apt plot`` calls.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from apt.errors import UsageError


__all__ = ["plot_run", "read_metrics", "register"]

log = logging.getLogger("apt.cli")

# Plotted in loss.png (or pure bookkeeping) rather than in a figure of their own.
_NOT_SERIES = {"step", "epoch", "loss", "val_loss", "train_loss"}


def register(subparsers: Any) -> None:
    """Add the ``plot`` command."""
    p = subparsers.add_parser(
        "plot",
        help="plot a run's metrics to PNG files",
        description="Draw RUN_DIR/metrics.jsonl to PNG files under RUN_DIR/plots/.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--no-plugins", action="store_true", help="skip the run's plugins' own plots")
    p.set_defaults(func=run)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; a bad line is an error naming the file and line."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{str(path)!r} does not exist; give a run folder written by apt train")
    records = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{str(path)!r} line {n} is not UTF-8 text: {exc}") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{str(path)!r} line {n} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise UsageError(f"{str(path)!r} line {n} is not a JSON object (one record per line): {line[:60]!r}")
        records.append(record)
    if not records:
        raise UsageError(f"{str(path)!r} holds no records yet")
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: Path, with_plugins: bool = True) -> list[Path]:
    """Write every figure of ``run_dir`` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = run_dir / "plots"
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the plots to {str(out)!r}: {exc.strerror or exc}") from None
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    # loss.png: training loss per logged step, validation loss where measured
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, style, label="train" if key == "loss" else "validation", markersize=3)
    ax.set(xlabel="step", ylabel="loss (nats per byte)", title=f"loss: {run_dir.name}")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "loss")

    # one figure per plain series, one per prefix of prefixed series
    groups: dict[str, list[str]] = defaultdict(list)
    for key in dict.fromkeys(k for r in records for k in r):
        if key in _NOT_SERIES:
            continue
        prefix = key.split("/", 1)[0] if "/" in key else key
        groups["loss_terms" if prefix == "loss" else prefix].append(key)
    for name, keys in groups.items():
        # deeper keys (moe/layer0/load_e1) get one panel per middle part (layer0), the rest share one
        panels: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            parts = key.split("/")
            panels["/".join(parts[1:-1]) if len(parts) > 2 else name].append(key)
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3 * len(panels)), squeeze=False, sharex=True)
        for ax, (title, panel_keys) in zip(axes[:, 0], panels.items(), strict=True):
            for key in panel_keys:
                xs, ys = _series(records, key)
                ax.plot(xs, ys, "-" if len(xs) > 1 else "o", label=key.rsplit("/", 1)[-1], markersize=3)
            ax.set(title=title)
            if 1 < len(panel_keys) <= 16:
                ax.legend(fontsize="x-small", ncol=2)
            ax.grid(alpha=0.3)
        axes[-1, 0].set(xlabel="step")
        save(fig, name.replace("/", "_"))

    if with_plugins:
        written += _plugin_plots(run_dir, records)
    return written


def _plugin_plots(run_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Call every ``plot`` provider of the run's plugins (loaded from its config.yaml)."""
    from apt.core import APTConfig
    from apt.plugins import PluginManager

    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return []
    pm = PluginManager()
    try:
        pm.load_from_config(APTConfig.from_yaml(cfg))
        pm.setup_all()
    except UsageError as exc:  # a plugin of the run is not installed here: core plots are still useful
        log.warning("skipping plugin plots: cannot load the run's plugins: %s", exc)
        return []
    try:
        if "plot" not in pm.registry.kinds():
            return []
        paths: list[Path] = []
        for name in pm.registry.list_providers("plot"):
            paths += [Path(p) for p in pm.registry.build("plot", name, records=records, run_dir=run_dir) or []]
        return paths
    finally:
        pm.teardown_all()


def run(args: argparse.Namespace) -> int:
    paths = plot_run(args.run_dir, with_plugins=not args.no_plugins)
    print(f"wrote {len(paths)} plots to {args.run_dir / 'plots'}: {', '.join(p.name for p in paths)}")
    return 0
