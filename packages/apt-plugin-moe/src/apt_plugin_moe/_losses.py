"""Router losses: the Switch load-balancing loss and the ST-MoE router z-loss.

Normalisation of the balancing loss (per MoE layer; the plugin averages over layers)::

    f_i  = (slots routed to expert i, all k choices, before dropping) / (N * k)   # sum_i f_i = 1
    P_i  = mean over the N tokens of softmax(logits)_i                           # sum_i P_i = 1
    loss = E * sum_i f_i * P_i

It is 1 at perfect balance (f_i = P_i = 1/E) and E when every token goes to one expert.
This is the Megatron / MegaBlocks / DeepSpeed ``topkgating`` convention. HF Mixtral's
``load_balancing_loss_func`` does not divide f by k (value k at balance) and pools the
layers before multiplying: for one layer, ``hf_value = top_k * switch_load_balancing_loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


__all__ = ["router_entropy", "router_z_loss", "switch_load_balancing_loss"]


def switch_load_balancing_loss(
    probs: Tensor, experts: Tensor, num_experts: int, counts: Tensor | None = None
) -> Tensor:
    """``E * sum_i f_i P_i`` for one layer (1 at perfect balance); gradient flows through P only.

    :param probs: ``(N, E)`` router probabilities (softmax of the logits).
    :param experts: ``(N, k)`` chosen expert ids.
    :param num_experts: E.
    :param counts: ``(E,)`` slots per expert if already counted.
    :returns: a scalar (fp32).
    """
    if counts is None:
        flat = experts.reshape(-1)
        counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(
            0, flat, torch.ones_like(flat)
        )
    f = counts.to(probs.dtype) / experts.numel()  # (E,) fraction of the N*k slots
    p = probs.mean(dim=0)  # (E,)
    return num_experts * (f * p).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE z-loss ``mean_t logsumexp(logits_t)^2`` (arXiv 2202.08906, eq. 5), fp32 scalar.

    :param logits: ``(N, E)`` raw router logits.
    """
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def router_entropy(probs: Tensor) -> Tensor:
    """Mean over tokens of the routing entropy divided by ``log E`` (1 = uniform, 0 = one-hot).

    :param probs: ``(N, E)`` router probabilities.
    """
    e = probs.shape[-1]
    if e == 1:
        return probs.new_zeros(())
    ent: Tensor = torch.special.entr(probs).sum(-1)  # (N,) -p log p, 0 where p = 0
    return ent.mean() / math.log(e)
