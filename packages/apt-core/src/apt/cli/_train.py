"""``apt train``: train a model from the defaults, a config file and ``--set`` overrides."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from apt.cli._resume import merge_config_data
from apt.cli._resume import newest_run_dir
from apt.cli._resume import refuse_compute_changes
from apt.errors import Preempted
from apt.errors import UsageError


__all__ = ["config_from_args", "register", "resolve_run"]

log = logging.getLogger("apt.cli")


def register(subparsers: Any) -> None:
    """Add the ``train`` command."""
    p = subparsers.add_parser(
        "train",
        help="train a model (defaults: a small GPT on the embedded corpus, every installed plugin)",
        description="Train a GPT. With no arguments: the default small model on the embedded corpus "
        "(Python's documentation topics) with every installed plugin. Under torchrun it runs DDP.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set training.max_epochs=3 (repeatable)",
    )  # fmt: skip
    p.add_argument("--run-dir", type=Path, metavar="DIR", help="run folder (default: <run.dir>/<run.name or time>)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--plugins", metavar="A,B", help="load exactly these plugins (comma-separated)")
    which.add_argument("--no-plugins", action="store_true", help="load no plugin")
    p.add_argument(
        "--resume", metavar="latest|PATH",
        help="continue a run from a checkpoint (needs a checkpoint plugin): the run folder's config.yaml is the "
        "base, --config/--set apply on top; without --run-dir, the newest run under run.dir",
    )  # fmt: skip
    p.add_argument(
        "--force-config", action="store_true",
        help="let a resume change keys that decide what the run computes (model, data, seed, schedule lengths)",
    )  # fmt: skip
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~apt.core.APTConfig` that ``--config``, ``--set``, ``--plugins`` and ``--resume`` describe."""
    from apt.core import APTConfig

    config = APTConfig.from_yaml(args.config) if args.config is not None else APTConfig()
    config = config.with_overrides(list(args.overrides))
    if getattr(args, "resume", None):
        config.training.resume = args.resume  # a path as given: not parsed as YAML
    _apply_plugin_flags(config, args)
    return config


def _apply_plugin_flags(config: Any, args: argparse.Namespace) -> None:
    if getattr(args, "no_plugins", False):
        config.plugins = []
    elif getattr(args, "plugins", None) is not None:
        names = [n.strip() for n in args.plugins.split(",") if n.strip()]
        if not names:
            raise UsageError("--plugins needs at least one plugin name (or use --no-plugins)")
        config.plugins = names


def resolve_run(args: argparse.Namespace) -> tuple[Any, Path]:
    """The configuration and the run folder of ``apt train``.

    A new run: the configuration of :func:`config_from_args`, in ``--run-dir`` (default
    ``<run.dir>/<run.name or time>``). A resume (``--resume``): the run folder is
    ``--run-dir``, else ``<run.dir>/<run.name>``, else the newest run under ``run.dir``
    (for ``latest``); its ``config.yaml`` is the base and the command's ``--config`` and
    ``--set`` apply on top (see :mod:`apt.cli._resume`).
    """
    from apt.core import APTConfig
    from apt.train import default_run_dir

    asked = config_from_args(args)
    if not asked.training.resume:
        run_dir = args.run_dir if args.run_dir is not None else default_run_dir(asked.run.dir, asked.run.name)
        return asked, run_dir
    if args.run_dir is not None:
        run_dir = args.run_dir
    elif asked.run.name is not None or asked.training.resume != "latest":
        run_dir = default_run_dir(asked.run.dir, asked.run.name)
    else:
        run_dir = newest_run_dir(Path(asked.run.dir))
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return asked, run_dir  # nothing to remember (the checkpoint plugin says whether there is a checkpoint)
    saved = APTConfig.from_yaml(saved_path)
    data = saved.to_dict()
    if args.config is not None:
        data = merge_config_data(data, _raw_yaml(args.config))
    config = APTConfig.from_dict(data).with_overrides(list(args.overrides))
    _apply_plugin_flags(config, args)
    config.training.resume = asked.training.resume
    if not getattr(args, "force_config", False):
        old, new = saved.to_dict(), config.to_dict()
        for d in (old, new):
            d["training"].pop("resume", None)
        refuse_compute_changes(old, new, APTConfig.core_sections())
    return config, run_dir


def _raw_yaml(path: Path) -> dict[str, Any]:
    """The mapping a config file holds as written (validated by APTConfig.from_yaml in config_from_args)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(data)


def _refuse_a_used_run_dir(run_dir: Path) -> None:
    """A new run must not overwrite another: its weights, summary, metrics and checkpoints."""
    used = [
        name for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints") if (run_dir / name).exists()
    ]
    if used:
        raise UsageError(
            f"run folder {str(run_dir)!r} already holds a run ({', '.join(used)}); continue it with "
            "--resume latest, or start a new one in another folder (--run-dir, or run.name)"
        )


def run(args: argparse.Namespace) -> int:
    from apt.plugins import PluginManager
    from apt.train import Trainer

    config, run_dir = resolve_run(args)
    pm = PluginManager()
    pm.load_from_config(config)
    if not config.training.resume:
        _refuse_a_used_run_dir(run_dir)
    try:
        trainer = Trainer(config, pm, run_dir=run_dir)
        summary = trainer.fit()
    except Preempted as exc:
        print(f"apt: {exc}; continue with: apt train --run-dir {run_dir} --resume latest", file=sys.stderr)
        return exc.exit_status
    finally:
        pm.teardown_all()
    if trainer.is_global_zero:
        stop = f" (stopped early: {summary['stop_reason']})" if summary.get("stop_reason") else ""
        print(f"run folder: {trainer.run_dir}")
        print(
            f"final val_bpb {summary['val_bpb']:.4f} bits per byte after {summary['steps']} steps{stop}; "
            f"unigram baseline {summary['baseline_bpb']:.4f} bpb; {summary['wall_s']:.0f} s"
        )
        for slow in summary.get("slow_hooks") or []:
            owner = f" of plugin {slow['plugin']!r}" if slow.get("plugin") else ""
            print(f"slow hook: {slow['handler']}{owner} took {100 * slow['share']:.0f}% of the training time")
    return 0
