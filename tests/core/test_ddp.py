"""More than one process: a 2-process gloo run matches one process with the same global batch.

Tolerance: losses agree to 1e-5 relative (measured: about 2e-7; the only difference is the
order of floating-point sums in DDP's gradient all-reduce).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from apt.core import APTConfig
from apt.errors import ConfigError
from apt.errors import UsageError
from apt.plugins import Plugin
from apt.plugins import PluginManager
from apt.plugins import hook
from apt.testing import TINY_CONFIG
from apt.testing import fake_entry_points
from apt.testing import tiny_config
from apt.train import Trainer
from apt.train._distributed import DistInfo
from apt.train._distributed import check_fingerprints
from apt.train._parallel import ddp_find_unused
from apt.train._parallel import refuse_scheduled_model_plugins
from safetensors.torch import load_file


TORCHRUN = shutil.which("torchrun")


def read_losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _torchrun(config_path: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "apt", "train", "--config", str(config_path),
         "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")
@pytest.mark.parametrize(
    ("distributed", "plugins"),
    [("ddp", []), ("fsdp", []), ("ddp", ["align", "moe"]), ("fsdp", ["align"])],
)
def test_two_process_gloo_run_matches_one_process(tmp_path: Path, distributed: str, plugins: list[str]) -> None:
    """torchrun --nproc_per_node=2 with batch B per rank logs the losses of one process with batch 2B.

    With fsdp the model is sharded per block (FSDP2); its gathered weights match too. With
    align (active from epoch 1), the alignment terms and the EMA teacher match as well, also
    when the teacher is built from the sharded model's gathered weights. The plugins' own
    step metrics (align/*, moe/*) describe the global batch: with MoE, whose balance loss is
    a per-forward quantity, the one process runs the same two micro-batches (grad_accum 2).
    """
    which = ["--plugins", ",".join(plugins)] if plugins else ["--no-plugins"]
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update(batch_size=2, steps_per_epoch=3, val_interval=100, distributed=distributed)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    two = _torchrun(path, tmp_path / "two", *which)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder:") == 1  # only rank 0 reports
    same_batch = ["training.batch_size=2", "training.grad_accum=2"] if "moe" in plugins else ["training.batch_size=4"]
    one = subprocess.run(
        [sys.executable, "-m", "apt", "train", "--config", str(path), *which, "--run-dir",
         str(tmp_path / "one"), *(arg for kv in same_batch for arg in ("--set", kv))],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = read_losses(tmp_path / "two"), read_losses(tmp_path / "one")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 6 * 4 * 32
    files = ["model.safetensors"] + (["align/stable.safetensors"] if plugins else [])
    for file in files:
        w2, w1 = load_file(tmp_path / "two" / file), load_file(tmp_path / "one" / file)
        assert w2.keys() == w1.keys() and "lm_head.weight" not in w2  # full weights, the tied head stored once
        for name in w1:
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6)
    if plugins:
        records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
        assert any("loss/align_kl" in r for r in records) and not any("loss/align_kl" in r for r in records[:3])
        reference = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
        validation = ("align/stable_val_loss", "align/live_val_loss", "align/argmax_agreement")  # other windows
        plugin_keys = [k for r in reference for k in r if k.startswith(("align/", "moe/")) and k not in validation]
        assert "align/kl" in plugin_keys and ("moe" not in plugins or "moe/layer0/load_e0" in plugin_keys)
        for r2, r1 in zip(records, reference, strict=True):
            for key in (k for k in r1 if k in plugin_keys):
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), (r1["step"], key)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")
def test_fsdp_refuses_a_model_change_in_the_middle_of_the_run(tmp_path: Path) -> None:
    """MoE upcycling by schedule cannot reshard a sharded model: refused with one line before the first step."""
    config = copy.deepcopy(TINY_CONFIG)
    config["training"].update(batch_size=2, steps_per_epoch=2, max_epochs=2, distributed="fsdp")
    config["schedules"] = {"enable_moe_at_epoch": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = _torchrun(path, tmp_path / "run", "--plugins", "moe")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("apt: error:")]
    assert errors and "training.distributed=fsdp" in errors[0] and "plugin 'moe'" in errors[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _fingerprint_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    version = "1.0" if rank == 0 else "1.1"
    fingerprint = {"plugins": [{"name": "moe", "version": version}], "order": {}}
    try:
        check_fingerprints(fingerprint, DistInfo(rank=rank, world_size=2))
        message = "no error"
    except UsageError as exc:
        message = str(exc)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.txt").write_text(message)


def test_ranks_with_different_plugins_stop_with_a_clear_message(tmp_path: Path) -> None:
    """Every rank raises a UsageError naming the rank and the differing plugin version."""
    mp.spawn(_fingerprint_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "rank 1 loaded different plugins than rank 0" in message
        assert "'1.0'" in message and "'1.1'" in message


def test_exit_skipping_finalization_still_joins_threads_runs_atexit_and_flushes() -> None:
    """What `apt` does after a torchrun run: a normal exit for the program, without interpreter teardown."""
    script = (
        "import atexit, sys, threading, time\n"
        "from apt.cli import exit_skipping_finalization\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('worker done'))).start()\n"
        "sys.stdout.write('buffered, no newline')\n"
        "exit_skipping_finalization(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["buffered, no newlineworker done", "atexit ran"]


def test_fsdp_refuses_only_scheduled_plugins_that_handle_on_model_built(pm: PluginManager) -> None:
    """Any handler of on_model_built counts (a method or an @hook one); other scheduled plugins are fine."""

    class Metric(Plugin):
        name = "metric"

        def on_step_end(self, **kwargs: object) -> None: ...

    class Copier(Plugin):
        name = "copier"

        @hook("on_model_built", priority=-10)
        def keep_a_copy(self, model: object) -> None: ...

    pm.register_plugin("metric", Metric)
    pm.register_plugin("copier", Copier)
    pm.load_from_config(APTConfig(plugins=["metric", "copier"], schedules={"enable_metric_at_epoch": 1}))
    refuse_scheduled_model_plugins(pm)  # metric is scheduled but never sees the model being built

    pm = PluginManager()
    pm.register_plugin("copier", Copier)
    pm.load_from_config(APTConfig(plugins=["copier"], schedules={"disable_copier_at_epoch": 1}))
    with pytest.raises(ConfigError, match="plugin 'copier' works on the model as it is built") as info:
        refuse_scheduled_model_plugins(pm)
    assert info.value.key == "schedules"


class _Gated(torch.nn.Module):
    """An FFN plus an extra linear map used only on every other training forward."""

    def __init__(self, ffn: torch.nn.Module, d: int) -> None:
        super().__init__()
        self.ffn, self.extra, self.calls = ffn, torch.nn.Linear(d, d, bias=False), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.ffn(x)
        return out + self.extra(x) if self.training and self.calls % 2 == 0 else out


class _GatedPlugin(Plugin):
    """Changes the model in place in on_model_built, as the guide allows."""

    name = "gated"

    def on_model_built(self, model: torch.nn.Module, config: APTConfig) -> None:
        block = model.blocks[0]  # type: ignore[index]
        block.ffn = _Gated(block.ffn, config.model.d_model)


def _ddp_worker(rank: int, init_file: str, out_dir: str, gated_on: list[int]) -> None:
    """Train 4 steps under DDP (gloo) with the gated plugin on the ranks in ``gated_on``."""
    from apt.cli import exit_skipping_finalization

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    config = tiny_config(training={"steps_per_epoch": 4, "max_epochs": 1, "batch_size": 2, "val_interval": 100})
    pm = PluginManager()
    if rank in gated_on:
        pm.register_plugin("gated", _GatedPlugin)
        config.plugins = ["gated"]
    with fake_entry_points():
        pm.load_from_config(config)
    try:
        Trainer(config, pm).fit()
        message = "ok"
    except Exception as exc:  # noqa: BLE001 - the test reads what happened on each rank
        message = f"{type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{rank}.txt").write_text(message)
    exit_skipping_finalization(0)  # DDP's gloo threads outlive the group (see apt.cli)


def test_ddp_auto_finds_unused_parameters_a_plugin_added_in_on_model_built(tmp_path: Path) -> None:
    """The plugin changes the model object core built, in place: 'auto' must still see the change."""
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path), [0, 1]), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["ok", "ok"]


def test_ranks_whose_plugins_differ_in_the_model_stop_before_ddp_compares_models(tmp_path: Path) -> None:
    """A model-changing plugin missing on rank 1: the plugin-set error, not DDP's own model mismatch."""
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path), [0]), nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("UsageError: rank 1 loaded different plugins than rank 0"), message


def test_ddp_find_unused_auto_follows_plugin_changes_to_the_parameters() -> None:
    """'auto' is off for the model core built, on once a plugin added or renamed parameters; booleans win."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    core = frozenset(name for name, _ in model.named_parameters())
    assert ddp_find_unused("auto", core, model) is False
    assert ddp_find_unused(True, core, model) is True
    model.append(torch.nn.Linear(2, 2))  # what an MoE conversion does: new parameter names
    assert ddp_find_unused("auto", core, model) is True
    assert ddp_find_unused(False, core, model) is False


def test_a_sharded_model_refuses_a_parameter_change_mid_run() -> None:
    """sync_optimizer after a change to a sharded model stops with one line instead of training a stale optimizer."""
    trainer = Trainer(tiny_config())
    trainer.setup()
    assert trainer.model is not None
    trainer._sharded = True  # what fully_shard set; the check itself needs no process group
    trainer.sync_optimizer()  # nothing changed: fine
    trainer.model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(UsageError, match="changed the model's parameters after the model was sharded"):
        trainer.sync_optimizer()
