"""Core optimizer and learning-rate-schedule providers.

``optimizer:adamw`` / ``optimizer:sgd`` take the parameter groups built by
:func:`param_groups` (weight decay only on matrices and embeddings, ``dim >= 2``, as
nanoGPT does) and the ``training`` config. ``lr_scheduler:cosine`` warms up linearly
and decays to ``training.min_lr`` on a cosine; ``lr_scheduler:constant`` warms up and
stays.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


if TYPE_CHECKING:
    from apt.core import TrainingConfig


__all__ = [
    "WarmupCosine",
    "build_adamw",
    "build_constant",
    "build_cosine",
    "build_sgd",
    "param_groups",
    "sync_param_groups",
]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: ``decay`` (tensors with ``dim >= 2``) and ``no_decay`` (biases, norm gains).

    Shared (tied) tensors appear once. Frozen parameters (``requires_grad=False``) are left out.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # .parameters() de-duplicates tied weights
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "name": "decay"},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_adamw(param_groups: list[dict[str, Any]], config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with ``training.lr``, ``training.betas``; weight decay as set per group."""
    return torch.optim.AdamW(
        param_groups, lr=config.lr, betas=(config.betas[0], config.betas[1]), weight_decay=config.weight_decay
    )


def build_sgd(param_groups: list[dict[str, Any]], config: TrainingConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum ``training.betas[0]``; weight decay as set per group."""
    return torch.optim.SGD(
        param_groups, lr=config.lr, momentum=config.betas[0], nesterov=config.betas[0] > 0,
        weight_decay=config.weight_decay,
    )  # fmt: skip


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio`` at ``total``.

    A class rather than a closure so that ``LambdaLR.state_dict()`` saves its settings.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float, decay: bool = True) -> None:
        self.warmup = warmup
        self.total = total
        self.min_ratio = min_ratio
        self.decay = decay

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)  # never 0, so the first step already moves
        if not self.decay:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_ratio + coeff * (1.0 - self.min_ratio)


def build_cosine(optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int) -> LambdaLR:
    """Linear warm-up for ``training.warmup_steps``, then cosine from ``training.lr`` to ``training.min_lr``."""
    ratio = min(1.0, config.min_lr / config.lr)
    return LambdaLR(optimizer, WarmupCosine(config.warmup_steps, total_steps, ratio))


def build_constant(optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int) -> LambdaLR:
    """Linear warm-up for ``training.warmup_steps``, then ``training.lr`` until the end."""
    return LambdaLR(optimizer, WarmupCosine(config.warmup_steps, total_steps, 1.0, decay=False))


def sync_param_groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[int, int]:
    """Make ``optimizer``'s groups hold exactly ``model``'s trainable parameters; returns (added, removed).

    Parameters gone from the model leave their group and their state; new ones join the
    ``decay`` group (``dim >= 2``) or the ``no_decay`` group (found by name, else by
    weight decay). Groups are edited in place, so the LR scheduler keeps working and the
    state (Adam moments) of unchanged parameters is kept.
    """
    current = [p for p in model.parameters() if p.requires_grad]
    alive = {id(p) for p in current}
    known: set[int] = set()
    removed = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in alive:
                optimizer.state.pop(p, None)
                removed += 1
        group["params"] = [p for p in group["params"] if id(p) in alive]
        known.update(id(p) for p in group["params"])
    added = [p for p in current if id(p) not in known]
    if added:
        groups = optimizer.param_groups
        by_name = {g.get("name"): g for g in groups}
        decay = by_name.get("decay") or next((g for g in groups if g.get("weight_decay", 0) > 0), groups[0])
        plain = by_name.get("no_decay") or next((g for g in groups if g.get("weight_decay", 0) == 0), groups[-1])
        decay["params"].extend(p for p in added if p.dim() >= 2)
        plain["params"].extend(p for p in added if p.dim() < 2)
    return len(added), removed
