"""Process-group set-up under ``torchrun`` and the few collectives the trainer needs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them (or with
``WORLD_SIZE=1``) everything here is a no-op and the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from apt.errors import ConfigError
from apt.errors import UsageError


__all__ = ["DistInfo", "all_reduce_sum", "broadcast_object", "check_fingerprints", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: whether :func:`init_distributed` created the process group (and so must destroy it)
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    """``training.device`` as a ``torch.device``: ``auto`` picks ``cuda:<local rank>`` when available."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(pref)
    except RuntimeError as exc:
        raise ConfigError(f"training.device {pref!r} is not a device: {exc}", key="training.device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"training.device is {pref!r} but CUDA is not available here; use 'auto' or 'cpu'",
                key="training.device",
            )
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistInfo()
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        # NCCL's object collectives (run folder, fingerprints) run on the current device: make
        # it the one this process trains on (training.device, else cuda:<local rank>)
        index = device.index if device is not None and device.index is not None else local_rank
        torch.cuda.set_device(index)
    if dist.is_initialized():  # somebody else (a test, a launcher) made the group
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=10))
    return DistInfo(rank, world_size, local_rank, owns_group=True)


def shutdown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all processes (in place; returns it). No-op for one process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (a picklable value)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_fingerprints(fingerprint: dict[str, Any], info: DistInfo) -> None:
    """Stop every process if any loaded other plugins, versions or hook orders than rank 0.

    Every rank gathers every fingerprint, so all ranks raise the same error together
    instead of hanging in the first collective.

    :raises UsageError: naming the first differing rank and what differs.
    """
    if not info.enabled:
        return
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, fingerprint)
    reference = gathered[0]
    for rank, other in enumerate(gathered[1:], start=1):
        if other != reference:
            raise UsageError(
                f"rank {rank} loaded different plugins than rank 0: {describe_difference(reference, other)}; "
                "install the same plugin versions on every node and pass the same --plugins / config"
            )


def describe_difference(a: Any, b: Any, path: str = "") -> str:
    """A short description of where two nested values first differ (``plugins.moe.version: '1.0' != '1.1'``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in b:
                return f"{where} is missing on that rank"
            if key not in a:
                return f"{where} is only on that rank"
            if a[key] != b[key]:
                return describe_difference(a[key], b[key], where)
    return f"{path or 'fingerprint'}: rank 0 has {a!r}, that rank has {b!r}"
