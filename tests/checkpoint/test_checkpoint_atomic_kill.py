"""A save killed with SIGKILL in the middle leaves the previous latest intact and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from apt_plugin_checkpoint import CheckpointStore


# The child saves a small checkpoint, then a big one written slowly (a test-only delay in
# the byte writer), so that the parent can kill it while the big one is being written.
_CHILD = textwrap.dedent(
    """
    import sys, time, torch
    import apt_plugin_checkpoint._format as fmt
    from apt_plugin_checkpoint import CheckpointStore, encode_state

    store = CheckpointStore(sys.argv[1])
    store.save(encode_state({"w": torch.full((4,), 1.0), "step": 1}), name="step1", step=1, epoch=0)
    fmt._CHUNK = 256 << 10
    write = fmt._write_chunk
    def slow_write(f, data):
        time.sleep(0.004)
        write(f, data)
    fmt._write_chunk = slow_write
    big = torch.arange(4 << 20, dtype=torch.float32)  # 16 MiB -> 64 slow chunks, about 0.3 s
    store.save(encode_state({"w": big, "step": 2}), name="step2", step=2, epoch=0)
    print("finished", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("delay", [0.0, 0.12])
def test_sigkill_during_save_keeps_previous_latest(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "ckpts"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".tmp-step2") for p in root.glob(".tmp-*")):
            assert child.poll() is None, "the child exited before its second save started"
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.002)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    store = CheckpointStore(root)
    # the killed save is not a checkpoint, and `latest` still names the previous one
    assert store.names() == ["step1"]
    assert store.latest_name() == "step1"
    loaded = store.load_latest()
    assert loaded.manifest.step == 1 and torch.equal(loaded.state["w"], torch.full((4,), 1.0))
    # the next run's start removes the leftover
    assert [n.startswith(".tmp-step2") for n in store.prepare()] == [True]
