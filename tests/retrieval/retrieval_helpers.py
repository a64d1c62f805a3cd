"""Helpers of the retrieval plugin's tests: configs, trainers and metric records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apt.core import APTConfig
from apt.plugins import PluginManager
from apt.testing import tiny_config
from apt.train import Trainer
from apt_plugin_retrieval import RetrievalPlugin


def retrieval_config(corpus: Path, **retrieval: Any) -> APTConfig:
    """The tiny config on ``corpus`` with the retrieval plugin (no progress bar) and ``retrieval`` options."""
    return tiny_config(
        data={"path": str(corpus)},
        plugins=["retrieval"],
        retrieval={"progress": False, **retrieval},
        training={"steps_per_epoch": 6},
    )


def make_trainer(config: APTConfig, run_dir: Path | None) -> Trainer:
    pm = PluginManager()
    pm.register_plugin("retrieval", RetrievalPlugin)
    pm.load_from_config(config)
    return Trainer(config, pm, run_dir=run_dir)


def plugin_of(trainer: Trainer) -> RetrievalPlugin:
    plugin = trainer.plugin_manager.get_plugin("retrieval")
    assert isinstance(plugin, RetrievalPlugin)
    return plugin


def records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
