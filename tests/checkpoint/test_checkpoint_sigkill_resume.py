"""Kill `apt train` with SIGKILL at random moments, resume each time, and end with identical weights.

The default suite kills 3 times; the 10-kill version runs with ``APT_RUN_SLOW=1``
(marked ``slow``). Each launch waits until training makes progress (``latest`` moves),
then kills after a random delay, so kills land in training steps and in saves (the run
saves every step). After the kills a last launch finishes the run; its
``model.safetensors`` must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from apt_plugin_checkpoint import CheckpointStore
from safetensors.torch import load_file


pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

_CONFIG = {
    "plugins": ["checkpoint"],
    "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 16, "dropout": 0.1},
    "training": {
        "max_epochs": 2, "steps_per_epoch": 20, "batch_size": 4, "val_interval": 7, "val_batches": 1,
        "log_interval": 1, "device": "cpu", "warmup_steps": 4, "seed": 11,
    },
    "checkpoint": {"every_n_steps": 1, "keep_last": 2},
}  # fmt: skip


def _launch(config: Path, run_dir: Path, resume: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "apt", "train", "--config", str(config), "--run-dir", str(run_dir)]
    if resume:
        cmd += ["--resume", "latest"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _latest_step(store: CheckpointStore) -> int:
    name = store.latest_name()
    return int(name[4:12]) if name and name.startswith("step") else 0


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> int:
    """Train with ``kills`` SIGKILLs and resumes; returns how many kills hit a running training.

    The run is long enough for every kill to land before it ends even on a fast machine:
    a launch advances at most about 0.25 s of steps before its kill, so 15 steps per kill.
    """
    rng = random.Random(seed)
    config = tmp_path / "config.yaml"
    settings = {**_CONFIG, "training": {**_CONFIG["training"], "steps_per_epoch": max(20, 15 * kills)}}
    config.write_text(yaml.safe_dump(settings))
    # the uninterrupted reference, launched like the others (same threads, same code path)
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "apt", "train", "--config", str(config), "--run-dir", str(reference)],
        capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints")
    killed = during_save = 0
    while True:
        before = _latest_step(store)
        proc = _launch(config, run, resume=before > 0)
        deadline = time.monotonic() + 300
        if killed < kills:
            # wait for progress in this process, then kill at a random moment
            while proc.poll() is None and _latest_step(store) <= before and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                killed += 1
                # a `.tmp-` folder left behind means the kill struck in the middle of a save
                during_save += any(p.name.startswith(".tmp-") for p in store.root.iterdir())
                # what a resume would read: the latest checkpoint verifies (or falls back loudly)
                store.load_latest()
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"a resumed run failed:\n{err.decode()[-3000:]}"
        break
    a, b = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the killed-and-resumed run ended with different weights"
    print(f"{killed} SIGKILLs, {during_save} of them during a save; final weights identical")
    return killed


def test_three_sigkills_then_identical_weights(tmp_path: Path) -> None:
    assert kill_and_resume(tmp_path, kills=3, seed=0) >= 1


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("APT_RUN_SLOW") != "1", reason="slow: set APT_RUN_SLOW=1 to run 10 kills")
def test_ten_sigkills_then_identical_weights(tmp_path: Path) -> None:
    assert kill_and_resume(tmp_path, kills=10, seed=1) >= 10
