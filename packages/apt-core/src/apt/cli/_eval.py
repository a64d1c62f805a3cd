"""``apt eval RUN_DIR``: the validation numbers of a run's weights, without training.

The run is rebuilt as :func:`~apt.cli._generate.load_run_model` does (its ``config.yaml``,
its plugins, every scheduled plugin brought to the run's last step), but inside a real
:class:`~apt.train.Trainer`, whose :meth:`~apt.train.Trainer.validate` then runs exactly
as during training: the same fixed validation windows, and the plugins'
``on_validation_end`` metrics (e.g. a retrieval plugin's ``retrieval/val_bpb``). On the
run's own data and weights it reproduces the run's last ``val_bpb``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from apt.errors import CheckpointError
from apt.errors import UsageError


__all__ = ["evaluate_run", "register"]


def register(subparsers: Any) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser(
        "eval",
        help="validation loss and bits per byte of a run's weights",
        description="Run the Trainer's validation on RUN_DIR's weights (config.yaml + model.safetensors), with the "
        "run's plugins loaded, on its own data or another text (--data).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder written by apt train")
    p.add_argument(
        "--weights", metavar="NAME", help="a 'weights' provider to take weights from (e.g. align's 'stable')"
    )
    p.add_argument("--data", metavar="PATH", help="validate on this text file or folder instead of the run's data")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)


def evaluate_run(run_dir: Path, weights: str | None = None, data: str | None = None) -> dict[str, float]:
    """Validation metrics of ``run_dir``'s final weights (or a ``weights`` provider's), on ``data`` if given."""
    from apt.cli._generate import last_schedule_point
    from apt.core import APTConfig
    from apt.plugins import PluginManager
    from apt.train import Trainer
    from apt.train import load_weights

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UsageError(
            f"{str(run_dir)!r} is not a run folder: it has no config.yaml (give the folder apt train made)"
        )
    config = APTConfig.from_yaml(cfg_path)
    config.training.resume = None
    if data is not None:
        if not Path(data).exists():
            raise UsageError(f"--data {data!r} does not exist; give a UTF-8 text file or a folder of .txt files")
        config.data.path = data
    saved_tokenizer = run_dir / "tokenizer.json"
    if config.data.tokenizer == "bpe" and config.data.tokenizer_path is None and saved_tokenizer.is_file():
        config.data.tokenizer_path = str(saved_tokenizer)  # the run's own BPE, not one trained on --data
    pm = PluginManager()
    pm.load_from_config(config)
    try:
        # the run folder, for plugins to read what the run left there (a datastore, stable weights);
        # only fit() writes to it, and eval never calls fit()
        trainer = Trainer(config, pm, run_dir=run_dir)
        trainer.setup()
        assert trainer.model is not None
        tc = config.training
        trainer.epoch, trainer.global_step = last_schedule_point(run_dir, tc.max_epochs, tc.total_steps)
        if pm.apply_schedule(trainer, epoch=trainer.epoch, step=trainer.global_step):
            trainer.sync_optimizer()
        if weights is not None:
            names = pm.registry.list_providers("weights") if "weights" in pm.registry.kinds() else []
            if weights not in names:
                raise UsageError(
                    f"--weights {weights!r}: no 'weights' provider of that name; available: "
                    f"{', '.join(names) or 'none'} (providers come from the run's plugins)"
                )
            load_weights(trainer.model, pm.registry.build("weights", weights, run_dir=run_dir))
        else:
            path = run_dir / "model.safetensors"
            if not path.is_file():
                raise CheckpointError(
                    f"{str(path)!r} does not exist: the run did not finish (apt train writes it at the end)",
                    path=str(path),
                )
            load_weights(trainer.model, path)
        trainer.global_step += 1  # the step counter the run's last validation saw (after its last step)
        return trainer.validate()
    finally:
        pm.teardown_all()


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_run(args.run_dir, weights=args.weights, data=args.data)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        for key, value in metrics.items():
            print(f"{key} {value:.6f}")
    return 0
