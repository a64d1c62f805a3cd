"""The top-k softmax router (Mixtral convention; k=1 is Switch routing)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn


__all__ = ["RouterOutput", "TopKRouter"]


class RouterOutput(NamedTuple):
    """What the router decides for N tokens.

    :ivar logits: raw router logits, fp32, ``(N, E)``.
    :ivar probs: ``softmax(logits)``, fp32, ``(N, E)``.
    :ivar weights: gates of the chosen experts renormalised over the k, fp32, ``(N, k)``.
    :ivar experts: ids of the chosen experts, int64, ``(N, k)``, in decreasing gate order.
    """

    logits: Tensor
    probs: Tensor
    weights: Tensor
    experts: Tensor


class TopKRouter(nn.Module):
    """Softmax over experts, top-k, gates renormalised over the k chosen (HF Mixtral).

    Megatron's ``pre_softmax=False`` (top-k on logits, softmax over the k) gives the same
    gates. Logits and softmax are computed in fp32 whatever the input dtype or autocast. ``jitter`` multiplies the
    router input by ``U(1 - jitter, 1 + jitter)`` in training (Switch Transformer); the
    experts still see the clean input.

    :param d_model: input width D.
    :param num_experts: E.
    :param top_k: k, ``1 <= k <= E``.
    :param jitter: input noise amplitude (0 = off).
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int, jitter: float = 0.0) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.jitter = jitter
        self.gate = nn.Linear(d_model, num_experts, bias=False)  # weight (E, D), as Mixtral's `gate`

    def forward(self, x: Tensor) -> RouterOutput:
        """Route ``x`` of shape ``(N, D)``; see :class:`RouterOutput`."""
        if self.training and self.jitter > 0:
            noise = torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            x = x * noise  # out of place: the experts keep the clean input
        # the router runs in fp32 even under autocast (cheap: D x E) so that logits, the z-loss
        # and near-tied top-k choices are not decided in bf16
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.gate.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)  # (N, E)
        weights, experts = probs.topk(self.top_k, dim=-1, sorted=True)  # (N, k), (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)  # renormalise over the k chosen
        return RouterOutput(logits, probs, weights, experts)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, jitter={self.jitter}"
