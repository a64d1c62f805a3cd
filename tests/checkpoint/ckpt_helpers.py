"""Helpers shared by the checkpoint plugin's tests: tiny configs, losses, weight comparison."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def tiny_config(
    plugins: list[str], resume: str | None = None, training: dict[str, Any] | None = None, **sections: Any
) -> Any:
    """Two epochs of six steps on a one-layer model (about a second on one CPU core).

    ``training`` overrides single keys of the training section; other sections replace theirs.
    """
    from apt.core import APTConfig

    data: dict[str, Any] = {
        "plugins": plugins,
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 16, "dropout": 0.1},
        "training": {
            "max_epochs": 2, "steps_per_epoch": 6, "batch_size": 4, "val_interval": 3, "val_batches": 1,
            "log_interval": 1, "device": "cpu", "warmup_steps": 2, "seed": 5, "resume": resume,
            **(training or {}),
        },
    }  # fmt: skip
    data.update(sections)
    return APTConfig(**data)


def step_losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` from metrics.jsonl (a resumed run appends; the last record of a step wins)."""
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[int(record["step"])] = float(record["loss"])
    return out


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, as the function-scoped fixtures give tests (tests/conftest.py).

    Module-scoped reference runs start before those fixtures, and float reductions on
    one thread and on two differ in the last bits: an exact comparison needs the same count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
