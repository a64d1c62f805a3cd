"""Exact resume with all three plugins: MoE upcycled by a schedule, Align's EMA state, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from apt.plugins import PluginManager
from apt.train import Trainer
from ckpt_helpers import one_thread
from ckpt_helpers import same_weights
from ckpt_helpers import step_losses
from ckpt_helpers import tiny_config


pytest.importorskip("apt_plugin_moe", reason="apt-plugin-moe is not installed")
pytest.importorskip("apt_plugin_align", reason="apt-plugin-align is not installed")

_PLUGINS = ["moe", "align", "checkpoint"]
_SECTIONS = {
    "moe": {"num_experts": 2, "top_k": 1},
    "align": {"start_epoch": 1},
    "schedules": {"enable_moe_at_epoch": 1},  # upcycling at the epoch boundary changes the model mid-run
}


def _trainer(run: Path, resume: str | None = None) -> Trainer:
    config = tiny_config(_PLUGINS, resume=resume, checkpoint={"every_n_steps": 2, "keep_last": None}, **_SECTIONS)
    pm = PluginManager()
    pm.load_from_config(config)
    return Trainer(config, pm, run_dir=run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    run = tmp_path_factory.mktemp("reference3")
    trainer = _trainer(run)
    with one_thread():
        trainer.fit()
    return trainer, run


@pytest.mark.parametrize("name", ["step00000004", "step00000006", "step00000010"])
def test_resume_with_moe_and_align_is_bitwise_exact(reference: tuple[Trainer, Path], tmp_path: Path, name: str) -> None:
    ref, ref_run = reference
    assert ref.plugin_manager.get_plugin("moe").is_enabled()
    resumed = _trainer(tmp_path, resume=str(ref_run / "checkpoints" / name))
    resumed.fit()
    assert same_weights(ref.model, resumed.model)
    ref_losses, losses = step_losses(ref_run), step_losses(tmp_path)
    step = int(name[4:])
    assert sorted(losses) == list(range(step + 1, 13))
    assert all(losses[s] == ref_losses[s] for s in losses)
    # the plugins' own state came back too: Align's EMA ("stable") weights
    ref_align, new_align = ref.plugin_manager.get_plugin("align"), resumed.plugin_manager.get_plugin("align")
    assert ref_align.stable is not None and new_align.stable is not None
    assert same_weights(ref_align.stable.module, new_align.stable.module)
