"""Parameter groups for the per-group metrics, and norms over them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch import nn


__all__ = ["ParamGroups", "group_of"]


def group_of(name: str, mode: str) -> str:
    """The group of parameter ``name``: ``layer`` -> ``blocks.3``, ``module`` -> ``blocks.3.attn``, ``param`` -> it.

    Names outside ``blocks`` group by their first part (``wte.weight`` -> ``wte``).
    """
    if mode == "param":
        return name
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return ".".join(parts[: 2 if mode == "layer" else 3])
    return parts[0]


class ParamGroups:
    """The model's trainable parameters (a tied tensor once, under its first name) and their groups."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # de-duplicates tied tensors
        self.names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.ids = tuple(id(p) for p in self.params)
        labels = [group_of(n, mode) for n in self.names] if mode != "none" else []
        self.groups: list[str] = list(dict.fromkeys(labels))
        index = {g: i for i, g in enumerate(self.groups)}
        self._labels = [index[label] for label in labels]  # parameter -> group index
        self._index: Tensor | None = None

    def matches(self, model: nn.Module) -> bool:
        """Whether ``model`` still has exactly these parameters (a plugin may have changed it)."""
        return tuple(id(p) for p in model.parameters() if p.requires_grad) == self.ids

    def norms(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """``(n_params,)`` fp32 L2 norm of each tensor (aligned with :attr:`params`; ``None`` counts as zero)."""
        device = self.params[0].device if self.params else torch.device("cpu")
        zero = torch.zeros((), device=device)
        return torch.stack(
            [torch.linalg.vector_norm(t, dtype=torch.float32) if t is not None else zero for t in tensors]
        )

    def group_norms(self, norms: Tensor) -> Tensor:
        """``(n_groups,)`` L2 norms of the groups, from :meth:`norms` (the root of each group's sum of squares)."""
        if self._index is None or self._index.device != norms.device:
            self._index = torch.tensor(self._labels, dtype=torch.long, device=norms.device)
        sq = torch.zeros(len(self.groups), dtype=norms.dtype, device=norms.device)
        return sq.index_add_(0, self._index, norms.square()).sqrt()
