"""Two gloo processes (DDP or FSDP2 on CPU): rank 0 writes, every rank loads its own RNG, resume is exact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from apt.train import Trainer
from apt_plugin_checkpoint import CheckpointStore
from ckpt_helpers import step_losses
from ckpt_helpers import tiny_config
from safetensors.torch import load_file


pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

# Like `apt train` under torchrun, the script leaves without interpreter finalization once
# fit() has returned (see apt.cli.exit_skipping_finalization: DDP keeps gloo's threads alive, and one
# touching Python during finalization aborts a finished run; seen once in CI). faulthandler
# prints every thread's stack should a rank still die.
_SCRIPT = textwrap.dedent(
    """
    import faulthandler, sys
    faulthandler.enable()
    sys.path.insert(0, sys.argv[3])
    from ckpt_helpers import tiny_config
    from apt.train import Trainer

    run_dir, resume, distributed = sys.argv[1], (sys.argv[2] or None), sys.argv[4]
    plugins = ["checkpoint", "moe", "align"]  # align starts at epoch 1, so its EMA state is in step 6's checkpoint
    config = tiny_config(plugins, resume=resume, checkpoint={"every_n_steps": 2, "keep_last": None})
    config = config.with_overrides(
        ["training.steps_per_epoch=4", "training.batch_size=2", f"training.distributed={distributed}"]
    )
    trainer = Trainer(config, run_dir=run_dir)
    trainer.fit()
    trainer.plugin_manager.teardown_all()
    from apt.cli import exit_skipping_finalization
    exit_skipping_finalization(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(run_dir: Path, distributed: str, resume: str = "") -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        cmd = [sys.executable, "-c", _SCRIPT, str(run_dir), resume, str(Path(__file__).parent), distributed]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_save_on_rank0_and_resume_exactly(tmp_path: Path, distributed: str) -> None:
    """DDP, and FSDP2 (the sharded state gathered onto rank 0 and loaded back by every rank), with all three plugins."""
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    _launch(ref, distributed)
    store = CheckpointStore(ref / "checkpoints")
    # one writer: exactly one folder per save (a second writer would add "-1" duplicates)
    assert sorted(store.names()) == [f"step{s:08d}" for s in (2, 4, 6, 8)]
    document = store.load("step00000006").state
    per_rank = document["per_rank"]
    assert len(per_rank) == 2
    assert not torch.equal(per_rank[0]["rng"]["torch"], per_rank[1]["rng"]["torch"])  # seeded by rank
    assert json.loads((ref / "checkpoints" / "step00000006" / "manifest.json").read_text())["step"] == 6

    _launch(resumed, distributed, str(ref / "checkpoints" / "step00000006"))  # mid-epoch 1 (step 2 of 4)
    a, b = load_file(ref / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_losses, losses = step_losses(ref), step_losses(resumed)
    assert sorted(losses) == [7, 8] and all(losses[s] == ref_losses[s] for s in losses)
    a, b = load_file(ref / "align" / "stable.safetensors"), load_file(resumed / "align" / "stable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the EMA teacher resumed too
    assert any(".experts." in k for k in a)  # MoE layers inside it

    if distributed == "fsdp":  # the full layout: an FSDP2 checkpoint resumes in one process too
        config = tiny_config(["checkpoint", "moe", "align"], resume=str(ref / "checkpoints" / "step00000008"))
        trainer = Trainer(config.with_overrides(["training.steps_per_epoch=4"]), run_dir=tmp_path / "one")
        trainer.fit()  # resumes at the end of the last epoch: validates, trains no further step
        assert trainer.global_step == 8 and trainer.model is not None and trainer.optimizer is not None
        final = load_file(ref / "model.safetensors")
        assert all(torch.equal(t, final[name]) for name, t in trainer.model.state_dict().items() if name in final)
        saved = store.load("step00000008").state["trainer"]["optimizer"]["state"]
        for name, param in trainer.model.named_parameters():
            assert torch.equal(trainer.optimizer.state[param]["exp_avg"], saved[name]["exp_avg"]), name
