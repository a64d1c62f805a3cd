"""``apt plot RUN_DIR``: draw a run's metrics to PNG files under ``RUN_DIR/plots/``.

``loss.png`` shows the training and validation loss; ``val_bpb.png`` every validation
bits-per-byte series against the unigram baseline; ``training.png`` the plain series
(``lr``, ``grad_norm``, ``tokens_per_s``), a panel each; one figure per prefix
(``loss_terms.png`` for every ``loss/<term>``, ``moe.png`` for ``moe/...``) with a panel
per series family (see :mod:`apt.cli._figures` for the rules). Plugins add
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

from apt.cli._figures import NOT_SERIES
from apt.cli._figures import draw_panel
from apt.cli._figures import grid_shape
from apt.cli._figures import palette
from apt.cli._figures import plan_group
from apt.cli._figures import series
from apt.errors import UsageError


__all__ = ["plot_run", "read_metrics", "register"]

log = logging.getLogger("apt.cli")


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


def _baseline_bpb(run_dir: Path) -> float | None:
    """The unigram baseline of the run's text, from ``summary.json`` (None while the run is going)."""
    try:
        value = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("baseline_bpb")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def plot_run(run_dir: Path, with_plugins: bool = True) -> list[Path]:
    """Write every figure of ``run_dir`` and return their paths (see :mod:`apt.cli._figures` for the rules)."""
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

    # loss.png: training loss per logged step, validation loss where measured, epoch means
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style, label in (("loss", "-", "train (step)"), ("val_loss", "o-", "validation"),
                              ("train_loss", "s", "train (epoch mean)")):  # fmt: skip
        xs, ys = series(records, key)
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=4, linewidth=1.2)
    ax.set(xlabel="step", ylabel="cross-entropy (nats per token)", title=f"loss: {run_dir.name}")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "loss")

    # bpb.png: every validation bits-per-byte series against the unigram baseline of the text
    bpb_keys = list(dict.fromkeys(k for r in records for k in r if k.endswith("val_bpb")))
    if bpb_keys:
        fig, ax = plt.subplots(figsize=(7, 4))
        for colour, key in zip(palette(len(bpb_keys)), bpb_keys, strict=True):
            xs, ys = series(records, key)
            ax.plot(xs, ys, "o-", markersize=4, label=key, color=colour)
        baseline = _baseline_bpb(run_dir)
        if baseline is not None:
            ax.axhline(baseline, color="grey", linestyle="--", label=f"unigram baseline ({baseline:.3f})")
        ax.set(xlabel="step", ylabel="bits per byte", title=f"validation bits per byte: {run_dir.name}")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        save(fig, "val_bpb")

    # one figure per group: the plain series together ("training"), each prefix on its own
    groups: dict[str, list[str]] = defaultdict(list)
    for key in dict.fromkeys(k for r in records for k in r):
        if key in NOT_SERIES:
            continue
        groups[key.split("/", 1)[0] if "/" in key else "training"].append(key)
    for prefix, keys in groups.items():
        panels, constants = plan_group(prefix, keys, records)
        if not panels:
            continue
        rows, cols = grid_shape(len(panels))
        fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 2.8 * rows), squeeze=False, sharex=True)
        flat = list(axes.flat)
        for ax, panel in zip(flat, panels, strict=False):
            draw_panel(ax, panel, records, fig)
        for ax in flat[len(panels) :]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("step")
        fig.suptitle(f"{'loss terms' if prefix == 'loss' else prefix}: {run_dir.name}")
        if constants:
            note = "constant: " + ", ".join(f"{k} = {v:g}" for k, v in constants.items())
            fig.text(0.01, -0.01, note, fontsize="small", ha="left", va="top", wrap=True)
        fig.tight_layout()
        save(fig, "loss_terms" if prefix == "loss" else prefix.replace("/", "_"))

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
