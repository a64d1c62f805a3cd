"""Two gloo processes log the gradient metrics of one process with the same global batch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.testing import fake_entry_points
from apt.testing import tiny_config
from apt.train import Trainer
from apt_plugin_gradient import GradientPlugin


GRADIENT = {"log": {"every": 1}, "noise_scale": {"enabled": True}, "surgery": {"cosine_every": 1}}


class _Aux(Plugin):
    """A second named loss term, so that term-gradient cosines exist."""

    name = "aux"

    def on_compute_loss(self, outputs: Any, **kw: Any) -> dict[str, torch.Tensor]:
        return {"aux_z": 0.05 * outputs.logits.float().logsumexp(-1).pow(2).mean()}


def _train(run_dir: Path, **training: Any) -> None:
    config = tiny_config(
        training={"steps_per_epoch": 4, "max_epochs": 1, "val_interval": 100, **training},
        gradient=GRADIENT,
        plugins=["gradient", "aux"],
    )
    pm = PluginManager()
    pm.register_plugin("gradient", GradientPlugin)
    pm.register_plugin("aux", _Aux)
    with fake_entry_points():
        pm.load_from_config(config)
    Trainer(config, pm, run_dir=run_dir).fit()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from apt.cli import exit_skipping_finalization

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    _train(Path(out_dir) / "two", batch_size=2, grad_accum=1)
    exit_skipping_finalization(0)  # DDP's gloo threads outlive the group (see apt.cli)


def _records(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.filterwarnings("ignore")
def test_two_processes_log_the_gradient_metrics_of_one_process(tmp_path: Path) -> None:
    """2 ranks x batch 2 (DDP) against 1 process x 2 micro-batches of 2: norms, ratios, noise scale, cosines agree.

    The one process owns the backward on cosine steps (one pass per term) and sums the
    micro-batch norms itself; under DDP the trainer does the backward and the noise-scale
    hooks see each rank's local gradient: the two code paths must give the same numbers.
    """
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    _train(tmp_path / "one", batch_size=2, grad_accum=2)
    two, one = _records(tmp_path / "two"), _records(tmp_path / "one")
    assert len(two) == len(one) == 4
    keys = [k for k in one[0] if k.startswith("grad/")]
    for needed in ("grad/norm", "grad/norm/blocks.0.attn", "grad/update_ratio/wte", "grad/noise_scale",
                   "grad/critical_batch", "grad/cos/lm|aux_z", "grad/term_norm/aux_z"):  # fmt: skip
        assert needed in keys, needed
    for r2, r1 in zip(two, one, strict=True):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        for key in keys:
            assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-7), (r1["step"], key)
