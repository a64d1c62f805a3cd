"""Seeding and the random-number-generator state that an exact resume restores."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch


__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (torch's call seeds every CUDA device too)."""
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every generator a run draws from (the batch sampler keeps its own)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    python = state["python"]
    # a round trip through JSON-like storage turns the state tuple into lists
    random.setstate((python[0], tuple(python[1]), python[2]) if isinstance(python, list) else python)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per device of the machine that saved it; this one may have fewer devices
        # (a checkpoint of an 8-GPU node resumed on one GPU), and a process uses its own only
        for index, cuda_state in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
